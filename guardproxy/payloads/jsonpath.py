"""A JSONPath subset compiled once into steps, for reading and replacing values in place."""

from __future__ import annotations

import re
from typing import Any

Doc = Any
Slot = tuple[Any, Any]

_TOKEN = re.compile(
    r"\.(?P<key>[A-Za-z_][\w-]*)"
    r"|\.\*|\[\*\]"
    r"|\[(?P<index>-?\d+)\]"
    r"|\[(?P<q>['\"])(?P<qkey>.*?)(?P=q)\]"
    r"|\[\?\(?\s*(?:@\.)?(?P<field>[\w-]+)\s*==\s*"
    r"(?:(?P<fq>['\"])(?P<fstr>.*?)(?P=fq)|(?P<fnum>-?\d+(?:\.\d+)?))\s*\)?\]"
)


class JsonPath:
    """A JSONPath subset ($ .key ['key'] [n] [*] [?name=='x']) compiled once into steps."""

    __slots__ = ("label", "steps", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.steps = _parse_path(text)
        self.label = _path_label(self.steps)

    def find(self, doc: Doc) -> list[Any]:
        """Every value the path selects (empty when nothing matches)."""
        return [container[key] for container, key in self.slots(doc)]

    def slots(self, doc: Doc) -> list[Slot]:
        """(container, key) of every selected value, so callers can replace it."""
        current: list[Slot] = [([doc], 0)]
        for kind, arg, value in self.steps:
            current = [slot for c, k in current for slot in _step(kind, arg, value, c[k])]
        return current


def _parse_path(text: str) -> tuple[tuple[str, Any, Any], ...]:
    if not text.startswith("$"):
        raise ValueError(f"JSON path {text!r} must start with '$'")
    steps: list[tuple[str, Any, Any]] = []
    pos = 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"JSON path {text!r}: cannot read {text[pos:]!r}")
        steps.append(_token_step(match))
        pos = match.end()
    return tuple(steps)


def _token_step(match: re.Match[str]) -> tuple[str, Any, Any]:
    if match["key"] is not None:
        return ("key", match["key"], None)
    if match["qkey"] is not None:
        return ("key", match["qkey"], None)
    if match["index"] is not None:
        return ("index", int(match["index"]), None)
    if match["field"] is not None:
        value: object = match["fstr"] if match["fq"] else float(match["fnum"])
        return ("filter", match["field"], value)
    return ("wild", None, None)


def _path_label(steps: tuple[tuple[str, Any, Any], ...]) -> str:
    """The name a mask uses: the last filter's value (an input's name), else the last key."""
    filters = [str(value) for kind, _, value in steps if kind == "filter"]
    keys = [str(arg) for kind, arg, _ in steps if kind == "key"]
    return (filters or keys or ["path"])[-1]


def _step(kind: str, arg: Any, value: Any, node: Any) -> list[Slot]:
    if kind == "key":
        return [(node, arg)] if isinstance(node, dict) and arg in node else []
    if kind == "index":
        return [(node, arg)] if isinstance(node, list) and -len(node) <= arg < len(node) else []
    if kind == "wild":
        if isinstance(node, dict):
            return [(node, k) for k in node]
        return [(node, i) for i in range(len(node))] if isinstance(node, list) else []
    if not isinstance(node, list):
        return []
    return [(node, i) for i, v in enumerate(node) if isinstance(v, dict) and v.get(arg) == value]
