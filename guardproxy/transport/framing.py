"""Bytes on the wire: status lines, heads, chunks; framing headers are ours, never the caller's."""

from __future__ import annotations

import http

from .headers import HeaderPairs

# Framing and connection management belong to the transport: a caller's copy is dropped.
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})
# Their lengths: a name of any other length is none of them, and is not lower-cased to tell.
_FRAMING_SIZES = frozenset(map(len, FRAMING))
_REQUEST_SIZES = _FRAMING_SIZES | {len(b"host")}
NO_BODY_STATUS = frozenset({204, 304})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


class HeadError(ValueError):
    """A head that cannot be written: bad status, CR or LF inside a name or value."""


def status_line(status: int, reason: bytes | None) -> bytes:
    """`HTTP/1.1 <status> <reason>`; the standard phrase unless a reason is given."""
    if reason is None:
        line = STATUS_LINES.get(status)
        if line is not None:
            return line
        raise HeadError(f"status {status} out of range")
    if not 100 <= status <= 999:
        raise HeadError(f"status {status} out of range")
    return check_lines(b"HTTP/1.1 %d %s\r\n" % (status, reason), 1)


def check_lines(head: bytes, lines: int) -> bytes:
    """Refuse a head whose names or values smuggled in CR or LF (response splitting)."""
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise HeadError("CR or LF inside a header name, value or reason")
    return head


def chunked_only(values: list[bytes]) -> bool:
    """Whether Transfer-Encoding values name `chunked` alone, once (the one coding we frame).

    Another coding (`gzip, chunked`) would be dropped with the framing, its bytes passed on
    as if they had none.
    """
    return len(values) == 1 and values[0].strip().lower() == b"chunked"


def parse_length(value: bytes) -> int:
    """A Content-Length value: digits only."""
    if not value.isdigit():
        raise HeadError("Content-Length is not a number")
    return int(value)


def header_lines(headers: HeaderPairs) -> tuple[bytes, int | None, bool]:
    """The caller's headers as lines, minus framing ones.

    Returns the lines, the caller's Content-Length if any, and whether the caller asked for
    the connection to close.
    """
    parts: list[bytes] = []
    length: int | None = None
    close = False
    count = 0
    for name, value in headers:
        if len(name) in _FRAMING_SIZES:
            lower = name.lower()
            if lower in FRAMING:
                if lower == b"content-length":
                    length = parse_length(value)
                elif lower == b"connection":
                    close = close or b"close" in value.lower()
                continue
        parts += (name, b": ", value, b"\r\n")
        count += 1
    return check_lines(b"".join(parts), count), length, close


def request_head(
    method: bytes, target: bytes, headers: HeaderPairs, host_line: bytes, framing: bytes
) -> bytes:
    """A request head for the upstream: caller's headers minus framing ones, Host if missing."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    has_host = False
    count = 2
    for name, value in headers:
        if len(name) in _REQUEST_SIZES:
            lower = name.lower()
            if lower in FRAMING:
                continue
            if lower == b"host":
                has_host = True
        parts += (name, b": ", value, b"\r\n")
        count += 1
    if not has_host:
        parts.append(host_line)
        count += 1
    if framing:
        parts.append(framing)
        count += 1
    parts.append(b"\r\n")
    return check_lines(b"".join(parts), count)


def chunk_size(length: int) -> bytes:
    """The size line of one chunk."""
    return b"%x\r\n" % length
