"""Redactor: configured fields and paths, and PII detectors, masked in sampled payloads."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from guardproxy.payloads import JsonPath
from guardproxy.payloads.codec import loads

Rule = Callable[[str], str]
# The v2 tensor metadata a reviewer needs to read a redacted input; never personal data.
_KEEP = frozenset({"name", "shape", "datatype"})

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
_NRIC = re.compile(r"\b[STFGM]\d{7}[A-Z]\b", re.IGNORECASE)
_NIK = re.compile(r"\b\d{6}(?:[0-6]\d|7[01])(?:0[1-9]|1[0-2])\d{6}\b")
_THAI = re.compile(r"\b\d(?:-?\d){12}\b")
_PHONE = re.compile(
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}(?!\d)"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}\b"
    r"|\b\d{3}[.-]\d{3}[.-]\d{4}\b"
)
# Every detector needs an "@" (email) or at least four digits (the shortest phone number):
# text with neither is returned as it is, without running each pattern over it.
_FOUR_DIGITS = re.compile(r"\d\D*\d\D*\d\D*\d")
# Values no detector reads; tensors are long lists of them, not worth a call each.
_INERT = frozenset({float, bool, type(None)})


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn check (payment card numbers)."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def thai_id_valid(digits: str) -> bool:
    """True when a 13-digit Thai national id has a correct check digit."""
    total = sum(int(d) * (13 - i) for i, d in enumerate(digits[:12]))
    return (11 - total % 11) % 10 == int(digits[12])


def _checked(pattern: re.Pattern[str], check: Callable[[str], bool], mask: str) -> Rule:
    def replace(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        return mask if check(digits) else match.group(0)

    return lambda text: pattern.sub(replace, text)


def _plain(pattern: re.Pattern[str], mask: str) -> Rule:
    return lambda text: pattern.sub(mask, text)


def detector_rules(detectors: Iterable[str]) -> tuple[Rule, ...]:
    """Compiled rules for the named detectors, in an order where longer numbers go first."""
    chosen = set(detectors)
    unknown = chosen - {"email", "phone", "card", "national_id"}
    if unknown:
        raise ValueError(f"unknown detectors: {', '.join(sorted(unknown))}")
    national = "[REDACTED:national_id]"
    table: list[tuple[str, Rule]] = [
        ("email", _plain(_EMAIL, "[REDACTED:email]")),
        ("card", _checked(_CARD, luhn_valid, "[REDACTED:card]")),
        ("national_id", _checked(_THAI, thai_id_valid, national)),
        ("national_id", _plain(_NIK, national)),  # the pattern checks its birth date
        ("national_id", _plain(_SSN, national)),
        ("national_id", _plain(_NRIC, national)),
        ("phone", _plain(_PHONE, "[REDACTED:phone]")),
    ]
    return tuple(rule for name, rule in table if name in chosen)


class Redactor:
    """Masks configured fields (any depth), JSON paths, and what the detectors find."""

    __slots__ = ("_fields", "_paths", "_rules")

    def __init__(self, fields_and_paths: Iterable[str], detectors: Iterable[str]) -> None:
        items = list(fields_and_paths)
        self._paths = tuple(JsonPath(item) for item in items if item.startswith("$"))
        self._fields = frozenset(item for item in items if not item.startswith("$"))
        self._rules = detector_rules(detectors)

    def text(self, text: str) -> str:
        """The text with every detected value masked."""
        if "@" not in text and _FOUR_DIGITS.search(text) is None:
            return text
        for rule in self._rules:
            text = rule(text)
        return text

    def document(self, doc: Any) -> Any:
        """A redacted copy of a parsed JSON document; the original is left as it was."""
        doc = self._walk(doc)
        for path in self._paths:
            mask = f"[REDACTED:{path.label}]"
            filtered = bool(path.steps) and path.steps[-1][0] == "filter"
            for container, key in path.slots(doc):
                container[key] = _masked(container[key], mask, filtered)
        return doc

    def body(self, body: bytes) -> Any:
        """A redacted request or response body: a JSON document, else text."""
        if not body:
            return None
        try:
            return self.document(loads(body))
        except ValueError:
            return self.text(body.decode("utf-8", errors="replace"))

    def _walk(self, node: Any) -> Any:
        if isinstance(node, dict):
            return self._walk_object(node)
        if isinstance(node, list):
            return [item if type(item) in _INERT else self._walk(item) for item in node]
        if isinstance(node, str):
            return self.text(node)
        if isinstance(node, bytes):  # a binary BYTES element of a gRPC tensor: kept out
            return f"[BINARY:{len(node)} bytes]"
        if isinstance(node, int) and not isinstance(node, bool) and abs(node) >= 10**8:
            masked = self.text(str(node))
            return node if masked == str(node) else masked
        return node

    def _walk_object(self, node: dict[str, Any]) -> dict[str, Any]:
        fields = self._fields
        out = {k: f"[REDACTED:{k}]" if k in fields else self._walk(v) for k, v in node.items()}
        name = node.get("name")
        if isinstance(name, str) and name in fields and "data" in node:
            out["data"] = _masked(node["data"], f"[REDACTED:{name}]", False)  # a v2 tensor
        return out


def _masked(value: Any, mask: str, keep_metadata: bool) -> Any:
    if keep_metadata and isinstance(value, dict):
        return {k: v if k in _KEEP else _masked(v, mask, False) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, mask, False) for v in value]
    return mask
