"""Bodies decoded from their Content-Encoding, with a cap on the decoded size.

Transport-independent: bytes and header values in, bytes out. A guard reads the decoded body
and the upstream gets exactly those bytes, so what was checked is what is forwarded.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

IDENTITY = "identity"
# zlib window bits: 31 reads a gzip wrapper, 15 a zlib one, -15 raw deflate.
_GZIP, _ZLIB, _RAW = 31, 15, -15
CODINGS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": _ZLIB}
# Headers that describe the encoded bytes and would be wrong for the decoded ones.
ENCODED_ONLY = ("Content-Encoding", "Content-Length", "Content-MD5", "Digest", "Content-Digest")


class EncodingError(Exception):
    """A body that cannot be decoded: status is what the client gets (400, 413 or 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def codings(header_values: Iterable[str]) -> list[str]:
    """The content codings applied, first applied first (identity and blanks dropped)."""
    found = [token.strip().lower() for value in header_values for token in value.split(",")]
    return [c for c in found if c and c != IDENTITY]


def decode_body(body: bytes, applied: list[str], limit: int) -> bytes:
    """Undo the codings, last applied first; EncodingError when unknown, corrupt or too big."""
    for coding in applied:
        if coding not in CODINGS:
            raise EncodingError(
                415, f"unsupported Content-Encoding {coding!r} (expected gzip, deflate or identity)"
            )
    if not body:
        return body
    for coding in reversed(applied):
        body = _inflate(body, CODINGS[coding], limit)
    return body


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    if wbits == _ZLIB and not _zlib_header(data):
        wbits = _RAW  # "deflate" sent without its zlib header, as some clients do
    parts: list[bytes] = []
    size = 0
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            chunk = inflater.decompress(data, limit - size + 1)
        except zlib.error:
            raise EncodingError(400, "the body does not match its Content-Encoding") from None
        size += len(chunk)
        if size > limit:
            raise EncodingError(413, f"decoded body larger than {limit} bytes")
        parts.append(chunk)
        if not inflater.eof:
            raise EncodingError(400, "the encoded body ends before its end marker")
        data = inflater.unused_data
        if not data:
            return b"".join(parts)
        if wbits != _GZIP:  # only gzip allows several members one after another
            raise EncodingError(400, "bytes after the end of the encoded body")


def _zlib_header(data: bytes) -> bool:
    """Whether the bytes start with a zlib header (deflate method, valid check bits)."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
