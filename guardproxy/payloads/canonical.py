"""Canonical bytes of request content: the same features give the same bytes however sent.

Key order, whitespace, 1 versus 1.0 and -0.0 versus 0.0 do not change what a model scores,
so they must not change a draw either.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

_EXACT = 2**53  # integers up to here survive the trip through float unchanged
SHORT = 64  # bytes: a subject this long is copied into each row's key, a longer one digested


def canonical(value: Any) -> bytes:
    """Compact JSON with sorted keys and every number written as a float."""
    return orjson.dumps(_plain(value), option=orjson.OPT_SORT_KEYS)


def indexed(subject: bytes, rows: int) -> list[bytes]:
    """One key per row from one subject: row 0 the subject itself, row i > 0 with "#i".

    A subject longer than SHORT stands as its digest: a copy in each of thousands of rows'
    keys would cost rows x its size.
    """
    if len(subject) > SHORT:
        subject = _digest(subject)
    return [subject] + [subject + b"#%d" % i for i in range(1, rows)]


def shared_suffix(whole: dict[str, Any]) -> bytes:
    """What each row's key ends with for the content every row shares (b"" for none).

    Its digest, computed once: a copy of it in each row's key would cost rows x its size,
    in time and in memory. Canonical JSON never holds a raw NUL, so no row's own content
    can end the way a suffix does.
    """
    return _digest(canonical(whole)) if whole else b""


def short_name(name: object) -> str:
    """A name as each row's key holds it: its text, or past SHORT characters its digest.

    Computed once per request: a long name copied into each of thousands of rows' keys would
    cost rows x its length. A name that itself starts with NUL is digested too, so no name
    can stand for a digest.
    """
    text = name if type(name) is str else str(name)
    if len(text) <= SHORT and not text.startswith("\0"):
        return text
    return "\0" + hashlib.blake2b(text.encode(errors="surrogatepass"), digest_size=16).hexdigest()


def _digest(content: bytes) -> bytes:
    return b"\0" + hashlib.blake2b(content, digest_size=32).digest()


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return value + 0.0  # -0.0 + 0.0 == 0.0
    if kind is int:
        return float(value) if -_EXACT <= value <= _EXACT else value
    if kind is list:
        return [_plain(v) for v in value]
    if kind is dict:
        return {k: _plain(v) for k, v in value.items()}
    if kind is bytes:  # a binary tensor's BYTES element that is not UTF-8
        return {"bytes": value.hex()}
    return value
