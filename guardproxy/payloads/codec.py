"""JSON in and out of the payloads: orjson, parsed and serialised once per body."""

from __future__ import annotations

import re
from itertools import repeat
from typing import Any

import orjson

from guardproxy.payloads.errors import MalformedJson

# A JSON string, escapes included (unrolled: linear, no backtracking between alternatives).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_CONTAINERS = frozenset({dict, list})
# Up to this size a body is written again (in C) to count its colons; past it, counting its
# objects' keys in Python reads less than writing every value again would.
_SMALL = 4096
_FEW_STRINGS = 64  # a string every 32 bytes at most (two quotes each): few enough to split


def loads(data: bytes) -> Any:
    """Parse JSON bytes (MalformedJson, a ValueError, on malformed JSON)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"malformed JSON: {exc}") from None


def repeats_a_key(data: bytes, doc: Any) -> bool:
    """Whether an object of `doc`, parsed from `data`, named a key more than once.

    Each member of an object has one ":" outside strings, and nothing else outside them
    has one; parsing keeps one member of each repeated key. A small body without escapes is
    written again: it then keeps every colon it had unless it repeated a key.
    """
    colons = data.count(b":")
    if colons and len(data) <= _SMALL and data.find(b"\\") < 0:  # find: memchr, unlike in
        try:
            return orjson.dumps(doc).count(b":") != colons
        except orjson.JSONEncodeError:  # nested past the 255 levels orjson writes
            pass
    return colons > 0 and _repeats(data, doc, colons)


def _repeats(data: bytes, doc: Any, colons: int) -> bool:
    """`repeats_a_key` for a large body, or one with escapes, in time linear in the body.

    Its colons outside strings outnumber the keys of `doc`'s objects when it repeats a key.
    The usual large body, whose strings hold no colon, is settled without reading a data list.
    """
    keys = _keys(doc, data.count(b"{"))
    if keys == colons:  # no string holds a colon: the keys written are the keys kept
        return False
    escapes = b"\\" in data
    if not escapes and data.count(b'"') < len(data) // _FEW_STRINGS:
        inside = data.split(b'"')[1::2]  # few strings: cut apart cheaply
        return keys != colons - sum(map(bytes.count, inside, repeat(b":")))
    if b"\\u003" not in data:  # no colon written "\u003a": many strings, written again
        try:
            return orjson.dumps(doc).count(b":") != colons
        except orjson.JSONEncodeError:
            pass
    return keys != _STRING.sub(b"", data).count(b":")


def _keys(doc: Any, objects: int) -> int:
    """The keys of every object in `doc`, found by looking into lists only while fewer than
    `objects` (at least the objects there are) have been found: data lists stay unread."""
    dicts: list[dict[Any, Any]] = [doc] if type(doc) is dict else []
    lists: list[list[Any]] = [doc] if type(doc) is list else []
    keys = found = 0
    while True:
        while dicts:
            obj = dicts.pop()
            found += 1
            keys += len(obj)
            for value in obj.values():
                kind = type(value)
                if kind is dict:
                    dicts.append(value)
                elif kind is list:
                    lists.append(value)
        if found >= objects or not lists:
            return keys
        items = lists.pop()
        if _CONTAINERS.isdisjoint(map(type, items)):  # numbers and text, in C: nothing inside
            continue
        for value in items:
            kind = type(value)
            if kind is dict:
                dicts.append(value)
            elif kind is list:
                lists.append(value)


def dumps(document: Any) -> bytes:
    """Serialise to compact JSON bytes."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
