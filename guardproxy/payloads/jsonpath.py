"""A JSONPath subset compiled once into steps, for reading and replacing values in place."""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import islice
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

    def find(self, doc: Doc, limit: int | None = None) -> list[Any]:
        """Every value the path selects (empty when nothing matches), or the first `limit`."""
        return [container[key] for container, key in self.slots(doc, limit)]

    def slots(self, doc: Doc, limit: int | None = None) -> list[Slot]:
        """(container, key) of every selected value, so callers can replace it.

        With a `limit`, each step stops after that many: the work is bounded by the limit,
        not by how many values a client's document holds.
        """
        current: list[Slot] = [([doc], 0)]
        for kind, arg, value in self.steps:
            if limit is None:
                current = [slot for c, k in current for slot in _step(kind, arg, value, c[k])]
            else:
                found = (slot for c, k in current for slot in _steps(kind, arg, value, c[k]))
                current = list(islice(found, limit))
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


def _steps(kind: str, arg: Any, value: Any, node: Any) -> Iterable[Slot]:
    """What `_step` selects, one at a time: a limited search stops when it has enough."""
    if kind == "wild" and isinstance(node, dict | list):
        return ((node, k) for k in (node if isinstance(node, dict) else range(len(node))))
    if kind == "filter" and isinstance(node, list):
        rows = enumerate(node)
        return ((node, i) for i, v in rows if isinstance(v, dict) and v.get(arg) == value)
    return _step(kind, arg, value, node)
