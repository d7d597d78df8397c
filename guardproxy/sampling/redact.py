"""Redactor: configured fields and paths, and PII detectors, masked in sampled payloads."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from guardproxy.payloads import JsonPath
from guardproxy.payloads.codec import dumps, loads

Rule = Callable[[str], str]
# The v2 tensor metadata a reviewer needs to read a redacted input; never personal data.
_KEEP = frozenset({"name", "shape", "datatype"})
DEFAULT_MAX_BYTES = 64 * 1024
TRUNCATED = "[TRUNCATED]"
# A cut never leaves half a token to slip past the detectors: back to the last separator.
_SEPARATOR = re.compile(r"[\s,;:\"'<>()\[\]{}]")
_LONGEST_TOKEN = 512

# Linear time, whatever the text (Python's re holds the GIL for a whole call, so a thread
# does not save the event loop from a pattern that backtracks): every pattern starts only
# where a token starts (a lookbehind) or at a fixed character, and every repetition is
# bounded, so the work per starting position is a constant. RFC 5321 bounds the parts of
# an address: 64 characters before the "@", 63 per domain label.
# "%40" is an "@" as a URL or a form body writes it.
_EMAIL = re.compile(r"(?<![\w.+%-])[\w.+%-]{1,64}(?:@|%40)[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")
# Never the digits after a decimal point (0.4111111111111111 is a score), here and in the
# national id numbers.
_CARD = re.compile(r"(?<![\w-])(?<!\d\.)\d(?:[ -]?\d){12,18}(?![\w-])")
# Groups split by dots (4111.1111.1111.1111): at least two dots, so a decimal never matches,
# and never 13 digits in an IPv4 address.
_CARD_DOTS = re.compile(r"(?<![\w.-])\d{2,7}(?:\.\d{2,7}){2,5}(?![\w-]|\.\d)")
_SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
_NRIC = re.compile(r"\b[STFGM]\d{7}[A-Z]\b", re.IGNORECASE)
_NIK = re.compile(r"\b(?<!\d\.)\d{6}(?:[0-6]\d|7[01])(?:0[1-9]|1[0-2])\d{6}\b")
_THAI = re.compile(r"\b(?<!\d\.)\d(?:-?\d){12}\b")
# An international number: "+", then digits and separators ending in a digit; its digits
# are counted after the match (E.164: at most 15). Pieces of digits matched one by one
# (`\d{1,4}(?:[ .-]?\d{2,4}){1,4}`) split a long run every possible way before failing:
# 64 KiB of "+" and 24 digits took 141 ms.
_PHONE_INTL = re.compile(r"\+(?:\(\d{1,4}\)|\d)[\d .()-]{4,21}\d(?!\d)")
# North American forms; a national number after its trunk "0" (0812-3456-7890, 020 7946
# 0958, 03-1234-5678); a Singapore number, eight digits from 6, 8 or 9 (9123 4567).
_PHONE_LOCAL = re.compile(
    r"\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}\b|\b\d{3}[.-]\d{3}[.-]\d{4}\b"
    r"|\b0\d{1,4}[ .-]\d{3,4}[ .-]\d{3,4}\b|\b[689]\d{3}[ -]\d{4}\b"
)
# Every detector needs an "@" or "%40" (email) or at least four digits (a phone number):
# text with neither is returned as it is, without running each pattern over it.
_FOUR_DIGITS = re.compile(r"\d\D*\d\D*\d\D*\d")
# Values no detector reads; tensors are long lists of them, not worth a call each.
_INERT = frozenset({bool, type(None)})
# What a body nested deeper than a review needs becomes: parsing takes 1,024 levels, writing
# JSON only 255, and Python's recursion ~1,000.
TOO_DEEP = "[REDACTED:too deep]"
WALKED = 4  # a parsed answer up to this many times max_bytes is walked, then cut
# The clean strings a redactor remembers: how many, and how long each at most.
CLEAN_STRINGS = 4096
CLEAN_CHARS = 64
# A number this long may be a card, phone or national id number written without quotes.
_LONG_NUMBER = 10**8
# The same bound as floats: a float compares with a float faster than with an int, and -10**8
# written in a comparison builds a new int every time.
_SHORT_LOW, _SHORT_HIGH = -1e8, 1e8


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


def _card_digits(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def phone_digits(digits: str) -> bool:
    """True for as many digits as an international phone number has (7 to 15)."""
    return 7 <= len(digits) <= 15


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
        ("card", _checked(_CARD_DOTS, _card_digits, "[REDACTED:card]")),
        ("national_id", _checked(_THAI, thai_id_valid, national)),
        ("national_id", _plain(_NIK, national)),  # the pattern checks its birth date
        ("national_id", _plain(_SSN, national)),
        ("national_id", _plain(_NRIC, national)),
        ("phone", _checked(_PHONE_INTL, phone_digits, "[REDACTED:phone]")),
        ("phone", _plain(_PHONE_LOCAL, "[REDACTED:phone]")),
    ]
    return tuple(rule for name, rule in table if name in chosen)


class Redactor:
    """Masks configured fields (any depth), JSON paths, and what the detectors find.

    `max_bytes` bounds the work and the output per body: a longer body is cut before any
    detector reads it, and marked; so is a longer string inside a document.
    """

    __slots__ = ("_clean", "_fields", "_keys", "_paths", "_rules", "max_bytes", "truncated")

    def __init__(
        self,
        fields_and_paths: Iterable[str],
        detectors: Iterable[str],
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        items = list(fields_and_paths)
        self._paths = tuple(JsonPath(item) for item in items if item.startswith("$"))
        self._fields = frozenset(item.lower() for item in items if not item.startswith("$"))
        self._rules = detector_rules(detectors)
        self.max_bytes = max_bytes
        self.truncated = 0  # bodies and strings cut to max_bytes (an int: one writer thread)
        # Short strings seen with nothing a detector could read (no "@", under four digits):
        # the categorical values and names every sample repeats skip the pattern search.
        self._clean: set[str] = set()
        # Object keys seen (short ones): whether each names a field, and how it is written.
        self._keys: dict[Any, tuple[bool, Any]] = {}

    def text(self, text: str) -> str:
        """The text with every detected value masked (cut and marked beyond max_bytes)."""
        if text in self._clean:
            return text
        cut = len(text) > self.max_bytes
        if cut:
            self.truncated += 1
            text = _cut(text, self.max_bytes)
        if "@" in text or "%40" in text or _FOUR_DIGITS.search(text) is not None:
            for rule in self._rules:
                text = rule(text)
        elif len(text) <= CLEAN_CHARS:  # bounded: a client may send endless distinct values
            if len(self._clean) >= CLEAN_STRINGS:
                self._clean.clear()
            self._clean.add(text)
        return text + TRUNCATED if cut else text

    def document(self, doc: Any) -> Any:
        """A redacted copy of a parsed JSON document; the original is left as it was."""
        try:
            doc = self._walk(doc)
        except RecursionError:  # nested deeper than a review needs; nothing of it is kept
            return TOO_DEEP
        for path in self._paths:
            mask = f"[REDACTED:{path.label}]"
            filtered = bool(path.steps) and path.steps[-1][0] == "filter"
            for container, key in path.slots(doc):
                container[key] = _masked(container[key], mask, filtered)
        return doc

    def body(self, body: bytes) -> Any:
        """A redacted request or response body: a JSON document, else text; cut if too long."""
        if not body:
            return None
        if len(body) > self.max_bytes:
            return self._oversized(body)
        try:
            return self.document(loads(body))
        except ValueError:
            return self.text(body.decode("utf-8", errors="replace"))

    def bounded(self, doc: Any) -> Any:
        """A parsed answer redacted, then cut to max_bytes (cutting redacted text is safe).

        One far over max_bytes is cut as a body is, without walking it whole: the walk of a
        16 MB answer held the interpreter, and the event loop with it, for seconds.
        """
        try:
            raw = dumps(doc)
            if len(raw) > WALKED * self.max_bytes:
                return self._oversized(raw)
            redacted = self.document(doc)
            encoded = dumps(redacted)
        except TypeError:  # deeper than JSON is written
            return TOO_DEEP
        size = len(encoded)
        if size <= self.max_bytes:
            return redacted
        self.truncated += 1
        text = encoded[: self.max_bytes].decode("utf-8", errors="ignore")
        return {"truncated": True, "bytes": size, "text": text + TRUNCATED}

    def _oversized(self, body: bytes) -> dict[str, Any]:
        """A body over the cap: its head as redacted text, or withheld when fields are named.

        Named fields and JSON paths need the whole document to be found; in a cut body they
        cannot be, so the head is kept only when the detectors alone are asked for.
        """
        self.truncated += 1
        out: dict[str, Any] = {"truncated": True, "bytes": len(body)}
        if self._fields or self._paths:
            out["text"] = None
            out["withheld"] = "over sampling.max_body_bytes: named fields cannot be found in a part"
            return out
        head = body[: self.max_bytes].decode("utf-8", errors="ignore")
        out["text"] = self.text(_cut(head, self.max_bytes)) + TRUNCATED
        return out

    def _walk(self, node: Any) -> Any:
        # Exact types first: a parsed document holds nothing else, and a type test is cheaper
        # than a chain of isinstance calls (a sample's walk showed in the hot path's profile).
        kind = type(node)
        if kind is dict:
            return self._walk_object(node)
        if kind is list:
            return self._walk_list(node)
        if kind is str:
            return self.text(node)
        if (kind is int or kind is float) and _SHORT_LOW < node < _SHORT_HIGH:
            return node
        return self._walk_other(node)

    def _walk_other(self, node: Any) -> Any:
        if isinstance(node, dict):
            return self._walk_object(node)
        if isinstance(node, list):
            return [self._walk(item) for item in node]
        if isinstance(node, str):
            return self.text(node)
        if isinstance(node, bytes):  # a binary BYTES element of a gRPC tensor: kept out
            return f"[BINARY:{len(node)} bytes]"
        if isinstance(node, float) and node.is_integer():  # 4111111111111111.0 is a card too
            masked = self.text(str(int(node)))
            return node if masked == str(int(node)) else masked
        if isinstance(node, int) and not isinstance(node, bool) and abs(node) >= _LONG_NUMBER:
            masked = self.text(str(node))
            return node if masked == str(node) else masked
        return node

    def _walk_list(self, node: list[Any]) -> list[Any]:
        # A tensor's data: no call for a number, one for a string. A loop, not a list
        # comprehension: that builds a function and its closure on every call, and most
        # lists here (shapes, one row's data) hold a single item.
        out = []
        for item in node:
            kind = type(item)
            if kind is float or kind is int:
                out.append(item if _SHORT_LOW < item < _SHORT_HIGH else self._walk_other(item))
            elif kind is str:
                out.append(self.text(item))
            else:
                out.append(item if kind in _INERT else self._walk(item))
        return out

    def _walk_object(self, node: dict[str, Any]) -> dict[str, Any]:
        fields, keys, clean, walk = self._fields, self._keys, self._clean, self._walk
        out = {}
        for k, v in node.items():
            named, key = keys.get(k) or self._key(k)
            kind = type(v)
            if named:
                v = f"[REDACTED:{k}]"
            elif kind is str:
                v = v if v in clean else self.text(v)  # the names and types each tensor repeats
            elif kind is list:
                v = self._walk_list(v)
            elif kind not in _INERT:
                v = walk(v)
            out[key] = v
        if not fields:
            return out
        name = node.get("name")
        if isinstance(name, str) and "data" in node and name.lower() in fields:
            out["data"] = _masked(node["data"], f"[REDACTED:{name}]", False)  # a v2 tensor
        if "columns" in out or "names" in out:
            self._mask_columns(out)
        return out

    def _key(self, key: Any) -> tuple[bool, Any]:
        """Whether an object's key names a field, and the key as written (an address too)."""
        if type(key) is not str:
            return False, key
        found = (key.lower() in self._fields, self.text(key))
        if len(key) <= CLEAN_CHARS:  # bounded: keys come from what clients send
            if len(self._keys) >= CLEAN_STRINGS:
                self._keys.clear()
            self._keys[key] = found
        return found

    def _mask_columns(self, table: dict[str, Any]) -> None:
        """Masks the named fields of a table whose columns are named apart from its rows:
        `columns` + `data` (pandas split, MLflow), `names` + `ndarray` or `tensor` (Seldon)."""
        names = table.get("columns", table.get("names"))
        if type(names) is not list:
            return
        masks = {
            i: f"[REDACTED:{n}]"
            for i, n in enumerate(names)
            if type(n) is str and n.lower() in self._fields
        }
        if not masks:
            return
        for key in ("data", "ndarray"):
            rows = table.get(key)
            if type(rows) is list:
                _mask_positions([row for row in rows if type(row) is list] or [rows], masks)
        tensor = table.get("tensor")
        if type(tensor) is dict and type(tensor.get("values")) is list:
            values, width = tensor["values"], len(names)
            rows = [values[i : i + width] for i in range(0, len(values), width)]
            _mask_positions(rows, masks)
            tensor["values"] = [value for row in rows for value in row]


def encoded(record: dict[str, Any]) -> bytes:
    """A sample record as JSON; a part nested too deep to be written becomes TOO_DEEP (one
    such body once made its whole batch of samples fail)."""
    try:
        return dumps(record)
    except TypeError:
        return dumps({k: v if _writable(v) else TOO_DEEP for k, v in record.items()})


def _writable(value: Any) -> bool:
    try:
        dumps(value)
    except TypeError:
        return False
    return True


def _cut(text: str, limit: int) -> str:
    """The first `limit` characters, ending at a separator so no token is left half-masked."""
    head = text[:limit]
    if len(text) <= limit:
        return head
    window = head[-_LONGEST_TOKEN:]
    separators = [match.start() for match in _SEPARATOR.finditer(window)]
    # No separator near the end: the whole tail could be one token, so none of it is kept.
    return head[: len(head) - len(window) + (separators[-1] if separators else 0)]


def _mask_positions(rows: list[list[Any]], masks: dict[int, str]) -> None:
    for row in rows:
        for i, mask in masks.items():
            if i < len(row):
                row[i] = mask


def _masked(value: Any, mask: str, keep_metadata: bool) -> Any:
    if keep_metadata and isinstance(value, dict):
        return {k: v if k in _KEEP else _masked(v, mask, False) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, mask, False) for v in value]
    return mask
