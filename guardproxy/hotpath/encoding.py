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
# Each coding is a full inflate pass and each gzip member a fresh inflater: clients send one
# of each, and a long "gzip, gzip, ..." header or a body of tiny members is work, not data.
MAX_CODINGS = 4
MAX_GZIP_MEMBERS = 64
# zlib copies the input left after a member ends (unused_data): fed in chunks, that copy is at
# most one chunk per member instead of the rest of the body.
_CHUNK = 16 << 10


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
    if len(applied) > MAX_CODINGS:
        raise EncodingError(
            415, f"{len(applied)} stacked Content-Encodings (at most {MAX_CODINGS} accepted)"
        )
    if not body:
        return body
    for coding in reversed(applied):
        body = _inflate(body, CODINGS[coding], limit)
    return body


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    if wbits == _ZLIB and not _zlib_header(data):
        wbits = _RAW  # "deflate" sent without its zlib header, as some clients do
    view = memoryview(data)
    parts: list[bytes] = []
    offset = size = 0
    while offset < len(view):
        if parts and wbits != _GZIP:  # only gzip allows several members one after another
            raise EncodingError(400, "bytes after the end of the encoded body")
        if len(parts) == MAX_GZIP_MEMBERS:
            raise EncodingError(400, f"more than {MAX_GZIP_MEMBERS} gzip members in the body")
        member, offset = _member(view, offset, wbits, limit - size, limit)
        size += len(member)
        parts.append(member)
    return b"".join(parts)


def _member(view: memoryview, offset: int, wbits: int, room: int, limit: int) -> tuple[bytes, int]:
    """One deflate stream from offset: its decoded bytes (at most room) and where it ends."""
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    while not inflater.eof:
        if offset >= len(view):
            raise EncodingError(400, "the encoded body ends before its end marker")
        chunk = view[offset : offset + _CHUNK]
        offset += len(chunk)
        try:
            # Under room + 1 bytes out, zlib took the whole chunk (no unconsumed_tail).
            out = inflater.decompress(chunk, room + 1)
        except zlib.error:
            raise EncodingError(400, "the body does not match its Content-Encoding") from None
        room -= len(out)
        if room < 0:
            raise EncodingError(413, f"decoded body larger than {limit} bytes")
        parts.append(out)
    return b"".join(parts), offset - len(inflater.unused_data)


def _zlib_header(data: bytes) -> bool:
    """Whether the bytes start with a zlib header (deflate method, valid check bits)."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
