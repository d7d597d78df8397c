"""Writing one response: the writer frames the body (length, chunked or close-delimited)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .errors import ClientDisconnected
from .framing import (
    LAST_CHUNK,
    NO_BODY_STATUS,
    HeadError,
    chunk_size,
    header_lines,
    status_line,
)
from .headers import HeaderPairs
from .request import Request

NONE, LENGTH, CHUNKED, CLOSE = 0, 1, 2, 3
SMALL = 16384  # bodies up to this are copied behind the head: one buffer, one send


class Sink(Protocol):
    """The connection as a response writer sees it."""

    @property
    def closing(self) -> bool:
        """Whether nothing more can be written."""

    @property
    def write_paused(self) -> bool:
        """Whether the transport's write buffer is over its high-water mark."""

    @property
    def buffered(self) -> int:
        """Bytes written but not yet sent."""

    def keeps_alive(self, request: Request) -> bool:
        """Whether the connection may serve another request after this one."""

    def write(self, data: bytes) -> None:
        """Queue bytes on the transport."""

    def writelines(self, data: Iterable[bytes]) -> None:
        """Queue several buffers on the transport at once."""

    async def drain(self) -> None:
        """Wait until the write buffer is under its low-water mark."""

    def response_done(self, writer: ResponseWriter) -> None:
        """The response is complete."""

    def abort(self) -> None:
        """Reset the connection."""


class ResponseWriter:
    """start/write/end for streamed answers, send() for a whole one; abort() to give up."""

    __slots__ = (
        "_mode",
        "_remaining",
        "_sink",
        "aborted",
        "closes",
        "finished",
        "request",
        "sent",
        "started",
        "status",
    )

    def __init__(self, sink: Sink, request: Request) -> None:
        self._sink = sink
        self.request = request
        self._mode = NONE
        self._remaining = 0
        self.started = False
        self.finished = False
        self.aborted = False
        self.closes = False
        self.status = 0
        self.sent = 0  # body bytes written (framing not counted)

    def _head(
        self, status: int, headers: HeaderPairs, reason: bytes | None, length: int | None
    ) -> bytes:
        """Frame the head; `length` is the whole body's size when known (send)."""
        if self.started:
            raise RuntimeError("response already started")
        if self._sink.closing:
            raise ClientDisconnected("client connection closed")
        first = status_line(status, reason)
        if status < 200:
            raise HeadError("informational answers go through inform()")
        lines, declared, close = header_lines(headers)
        request = self.request
        keep = not close and self._sink.keeps_alive(request)
        if request.method == b"HEAD" or status in NO_BODY_STATUS:
            # A HEAD or 304 answer carries the length the body would have had, if given.
            keep_length = declared is not None and status != 204
            framing = b"content-length: %d\r\n" % (declared or 0) if keep_length else b""
            mode = NONE
        elif length is not None or declared is not None:
            size = length if length is not None else (declared or 0)
            framing, mode, self._remaining = b"content-length: %d\r\n" % size, LENGTH, size
        elif request.version == "1.1":
            framing, mode = b"transfer-encoding: chunked\r\n", CHUNKED
        else:
            framing, mode, keep = b"", CLOSE, False
        if not keep:
            framing += b"connection: close\r\n"
        elif request.version == "1.0":
            framing += b"connection: keep-alive\r\n"
        self._mode, self.closes, self.status, self.started = mode, not keep, status, True
        return first + lines + framing + b"\r\n"

    @property
    def buffered(self) -> int:
        """Bytes written to the client but not yet sent (bounded by write back-pressure)."""
        return self._sink.buffered

    def inform(self, status: int, headers: HeaderPairs = ()) -> None:
        """An interim 1xx answer (103 Early Hints...); HTTP/1.0 clients do not get one."""
        if self.started or not 100 <= status < 200 or status == 101:
            raise HeadError("inform() takes a 1xx status other than 101, before start()")
        if self.request.version == "1.1" and not self._sink.closing:
            lines, _, _ = header_lines(headers)
            self._sink.write(status_line(status, None) + lines + b"\r\n")
            self.request.continued = self.request.continued or status == 100

    def start(self, status: int, headers: HeaderPairs, reason: bytes | None = None) -> None:
        """Send the status line and headers; the body follows with write() and end()."""
        self._sink.write(self._head(status, headers, reason, None))

    async def write(self, data: bytes) -> None:
        """Send part of the body; waits while the client is not reading fast enough."""
        sink = self._sink
        if not self.started or self.finished:
            raise RuntimeError("write() needs a started, unfinished response")
        if sink.closing:
            raise ClientDisconnected("client connection closed")
        if not data:
            return
        mode = self._mode
        if mode != NONE:
            self.sent += len(data)
        if mode == CHUNKED:
            sink.writelines((chunk_size(len(data)), data, b"\r\n"))
        elif mode == LENGTH:
            if len(data) > self._remaining:
                self.abort()
                raise ValueError("response body longer than its Content-Length")
            self._remaining -= len(data)
            sink.write(data)
        elif mode == CLOSE:
            sink.write(data)
        if sink.write_paused:
            await sink.drain()

    def end(self, data: bytes = b"") -> None:
        """Send the last part of the body and complete the response."""
        sink = self._sink
        if not self.started or self.finished:
            raise RuntimeError("end() needs a started, unfinished response")
        if sink.closing:
            self.finished = True
            raise ClientDisconnected("client connection closed")
        mode = self._mode
        if mode != NONE:
            self.sent += len(data)
        if mode == CHUNKED:
            if data:
                sink.writelines((chunk_size(len(data)), data, b"\r\n", LAST_CHUNK))
            else:
                sink.write(LAST_CHUNK)
        elif mode == LENGTH:
            if len(data) != self._remaining:
                self.abort()
                raise ValueError("response body shorter or longer than its Content-Length")
            self._remaining = 0
            if data:
                sink.write(data)
        elif mode == CLOSE and data:
            sink.write(data)
        self.finished = True
        sink.response_done(self)

    def send(
        self, status: int, headers: HeaderPairs, body: bytes = b"", reason: bytes | None = None
    ) -> None:
        """A whole response in one write, framed with its Content-Length."""
        head = self._head(status, headers, reason, len(body))
        sink = self._sink
        if self._mode == NONE or not body:
            sink.write(head)
        else:
            self.sent = len(body)
            if len(body) <= SMALL:
                sink.write(head + body)
            else:
                sink.writelines((head, body))
        self.finished = True
        sink.response_done(self)

    async def delivered(self) -> None:
        """Wait until the client has read what was written, to the transport's high-water
        mark (ClientDisconnected if it went away first)."""
        if self._sink.write_paused:
            await self._sink.drain()

    def abort(self) -> None:
        """Reset the connection so the client cannot take a partial answer as complete."""
        if not self.finished:
            self.finished = self.aborted = True
            self._sink.abort()
