"""One client connection: parse requests with llhttp, run the handler for each in turn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

import httptools

from .body import BodyBuffer
from .config import ServerConfig
from .counters import ServerCounters
from .errors import BadRequest, ClientDisconnected, RequestError, RequestTimeout
from .framing import CONTINUE
from .headers import HeaderList, HeaderPairs, Headers
from .request import Request
from .response import ResponseWriter

log = logging.getLogger("guardproxy.transport")

Handler = Callable[[Request, ResponseWriter], Awaitable[None]]
ErrorBuilder = Callable[[int, str, "Request | None"], tuple[HeaderPairs, bytes]]

FLOW, PIPELINE = 1, 2  # reasons to stop reading the socket
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing; the reason is already recorded."""


@dataclass(slots=True)
class Shared:
    """What every connection of one server shares."""

    handler: Handler
    errors: ErrorBuilder
    config: ServerConfig
    counters: ServerCounters
    connections: set[ServerConnection] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    draining: bool = False
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # set when the last one closed


class ServerConnection(asyncio.Protocol):
    """Requests answered in order; the next one is handled only after the previous ended."""

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self._config = shared.config
        self._counters = shared.counters
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self._parser = self._new_parser()
        self._url = b""
        self._headers: HeaderList = []
        self._head_size = 0
        self._head_raw = 0
        self._in_head = False
        self._head_started = 0.0
        self._parsing: Request | None = None  # the request whose body is being parsed
        self._active: ResponseWriter | None = None
        self._queue: deque[Request] = deque()
        self._pauses = 0
        self._write_paused = False
        self._write_paused_at = 0.0
        self._drain: asyncio.Future[None] | None = None
        self._last_data = self._idle_since = self._loop.time()
        self._stopped = False  # no further request will be parsed
        self._discard = False  # bytes received are ignored
        self._owed_error: tuple[int, str] | None = None
        self.closed = False

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # Bytes after a `Connection: close` request are ignored, not a parse error that
        # would replace the answer to the request before them.
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
        return parser

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with the server."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self._shared.connections.add(self)
        self._shared.gone.clear()
        self._counters.connections += 1
        self._counters.open += 1

    def data_received(self, data: bytes) -> None:
        """Feed the parser; callbacks below do the rest."""
        self._last_data = self._loop.time()
        if self._discard:
            return
        was_in_head = self._in_head
        self._feed(data)
        # A head still incomplete after a whole read was all head: bound it before the
        # parser's callbacks see it (they only count complete header lines).
        if was_in_head and self._in_head and not self._discard:
            self._head_raw += len(data)
            if self._head_raw > self._config.max_head_size:
                self._refuse(431, "request head too large", "head_too_large")

    def _feed(self, data: bytes) -> None:
        while True:
            try:
                self._parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as exc:
                # A body-less upgrade request was answered as a plain one: go on after it.
                data = data[exc.args[0] :]
                self._parser = self._new_parser()
                if not data or self._discard:
                    return
            except httptools.HttpParserCallbackError as exc:
                if not isinstance(exc.__context__, _Stop):
                    log.error("request parser callback failed", exc_info=exc.__context__)
                    self._malformed("malformed request")
                return
            except httptools.HttpParserError as exc:
                self._malformed(f"malformed request: {exc}")
                return

    def eof_received(self) -> bool:
        """The client half-closed: answer what is owed, then close."""
        self._stop()
        if self._parsing is not None:
            self._parsing.body.fail(ClientDisconnected("client closed before the end of the body"))
        if self._active is None:
            self._close()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """Wake everything waiting on this connection."""
        self.closed = True
        self._stopped = self._discard = True
        shared = self._shared
        shared.connections.discard(self)
        if not shared.connections:
            shared.gone.set()
        self._counters.open -= 1
        if self._parsing is not None:
            self._parsing.body.fail(ClientDisconnected("client connection closed"))
        self._queue.clear()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(ClientDisconnected("client connection closed"))

    def pause_writing(self) -> None:
        """The transport's buffer is full: writers wait."""
        self._write_paused = True
        self._write_paused_at = self._loop.time()

    def resume_writing(self) -> None:
        """The transport's buffer drained."""
        self._write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # llhttp callbacks

    def on_message_begin(self) -> None:
        """A new request starts."""
        if self._stopped:
            raise _Stop
        self._in_head = True
        self._head_started = self._last_data
        self._url = b""
        self._headers = []
        self._head_size = self._head_raw = 0

    def on_url(self, url: bytes) -> None:
        """Part of the request target."""
        self._url += url
        self._head_size += len(url)
        if self._head_size > self._config.max_head_size:
            raise self._refuse(431, "request head too large", "head_too_large")

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header line, whole."""
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._config.max_head_size:
            raise self._refuse(431, "request head too large", "head_too_large")

    def on_headers_complete(self) -> None:
        """The head is complete: make the request and run it, or queue it behind another."""
        self._in_head = False
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise self._refuse(505, "HTTP version not supported", "bad_version")
        method = parser.get_method()
        headers = Headers(self._headers)
        if parser.should_upgrade():
            self._check_upgrade(method, headers)
        keep_alive = parser.should_keep_alive()
        body = BodyBuffer(self, self._config.high_water)
        request = Request(self, method, self._url, version, headers, self.peer, keep_alive, body)
        self._parsing = request
        if not keep_alive:
            self._stop()
        if self._active is None:
            self._start(request)
        elif len(self._queue) < self._config.max_pipelined:
            self._queue.append(request)
            self._pause(PIPELINE)
        else:
            # Requests beyond the limit are left unread: the client sends them again.
            self._counters.count("pipeline_overflow")
            self._parsing = None
            self._stop()
            raise _Stop

    def _check_upgrade(self, method: bytes, headers: Headers) -> None:
        # Upgrades are not supported: a body-less one is answered as a plain request; the
        # parser would swallow the body of one that has a body, so it is refused.
        if method == b"CONNECT":
            raise self._refuse(405, "CONNECT is not supported", "bad_method")
        if b"content-length" in headers or b"transfer-encoding" in headers:
            raise self._refuse(400, "an upgrade request cannot carry a body", "bad_request")

    def on_body(self, body: bytes) -> None:
        """Part of the body."""
        self._parsing.body.feed(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        """The body is complete."""
        parsing, self._parsing = self._parsing, None
        if parsing is not None:
            parsing.body.finish()

    # parse failures

    def _refuse(self, status: int, message: str, kind: str) -> _Stop:
        """Stop parsing; answer `status` once earlier requests are answered, then close.

        Returns the exception a parser callback raises to stop the parser.
        """
        self._counters.count(kind)
        self._parsing = None
        self._owed_error = (status, message)
        self._stop()
        self._pause(PIPELINE)
        if self._active is None:
            self._answer_owed()
        return _Stop()

    def _malformed(self, message: str) -> None:
        parsing = self._parsing
        active = self._active
        if parsing is not None and active is not None and active.request is parsing:
            # The handler is reading this body: it hears of the error; the connection closes.
            self._counters.count("bad_request")
            self._stop()
            self._discard = True
            self._parsing = None
            parsing.body.fail(_counted(BadRequest(message)))
            return
        if parsing is not None and self._queue and self._queue[-1] is parsing:
            self._queue.pop()
        self._refuse(400, message, "bad_request")

    def _stop(self) -> None:
        self._stopped = True

    def _answer_owed(self) -> None:
        """Nothing is in flight: send the owed error, or just close."""
        owed, self._owed_error = self._owed_error, None
        self._discard = True
        if owed is not None and not self.closing:
            headers, body = self._shared.errors(owed[0], owed[1], None)
            request = Request(self, b"GET", b"", "1.1", Headers([]), self.peer, False, _EMPTY)
            ResponseWriter(self, request).send(owed[0], headers, body)
        self._close()

    # dispatch

    def _start(self, request: Request) -> None:
        writer = ResponseWriter(self, request)
        self._active = writer
        shared = self._shared
        shared.counters.requests += 1
        task = self._loop.create_task(self._run(request, writer))
        shared.tasks.add(task)
        task.add_done_callback(shared.tasks.discard)

    async def _run(self, request: Request, writer: ResponseWriter) -> None:
        counters = self._counters
        counters.in_flight += 1
        try:
            await self._shared.handler(request, writer)
        except RequestError as exc:
            if not exc.counted:
                counters.count(_KINDS.get(exc.status, "bad_request"))
            self._stop()
            self._answer_error(writer, request, exc.status, exc.message)
        except ClientDisconnected:
            counters.count("client_disconnect")
            writer.abort()
        except asyncio.CancelledError:
            writer.abort()
            raise
        except Exception:
            counters.count("handler_error")
            log.exception("request handler failed")
            self._answer_error(writer, request, 500, "internal error")
        else:
            if not writer.finished:
                counters.count("handler_error")
                log.error("request handler returned without finishing its response")
                self._answer_error(writer, request, 500, "no response")
        finally:
            counters.in_flight -= 1

    def _answer_error(
        self, writer: ResponseWriter, request: Request, status: int, text: str
    ) -> None:
        if writer.started or self.closing:
            writer.abort()
            return
        headers, body = self._shared.errors(status, text, request)
        writer.send(status, headers, body)

    def response_done(self, writer: ResponseWriter) -> None:
        """The active response ended: close, or take the next request."""
        self._active = None
        if writer.closes or not writer.request.body.done:
            self._close()
            return
        if self._queue:
            request = self._queue.popleft()
            if not self._queue and self._owed_error is None:
                self._resume(PIPELINE)
            self._start(request)
            return
        if self._stopped and self._parsing is None:
            self._answer_owed()
            return
        self._idle_since = self._loop.time()
        if self._in_head:
            self._head_started = self._idle_since  # its head timeout starts now

    # what requests and writers need

    def want_body(self, request: Request) -> None:
        """Answer `Expect: 100-continue` the first time the handler asks for the body."""
        if not request.continued and request.expects_continue:
            request.continued = True
            active = self._active
            mine = active is not None and active.request is request and not active.started
            if mine and not self.closing:
                self._transport.write(CONTINUE)  # type: ignore[union-attr]
                self._last_data = self._loop.time()  # the body timeout starts now

    def keeps_alive(self, request: Request) -> bool:
        """Whether another request may follow this one's response."""
        return request.keep_alive and request.body.done and not self._shared.draining

    @property
    def closing(self) -> bool:
        """Whether nothing more can be written."""
        transport = self._transport
        return self.closed or transport is None or transport.is_closing()

    @property
    def write_paused(self) -> bool:
        """Whether writers must wait for the client to read."""
        return self._write_paused

    @property
    def buffered(self) -> int:
        """Bytes queued on the transport, not yet sent."""
        transport = self._transport
        return 0 if transport is None or self.closed else transport.get_write_buffer_size()

    def write(self, data: bytes) -> None:
        """Queue bytes for the client."""
        self._transport.write(data)  # type: ignore[union-attr]

    def writelines(self, data: Iterable[bytes]) -> None:
        """Queue several buffers for the client in one go."""
        self._transport.writelines(data)  # type: ignore[union-attr]

    async def drain(self) -> None:
        """Wait until the client has read enough of what was written."""
        if self.closed:
            raise ClientDisconnected("client connection closed")
        if self._write_paused:
            drain = self._drain = self._loop.create_future()
            await drain

    def abort(self) -> None:
        """Reset the connection: the client sees an error, never a short answer."""
        transport = self._transport
        if transport is None or self.closed:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        transport.abort()

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # back-pressure on reading

    def pause_body(self) -> None:
        """Too much request body waits for the handler."""
        self._pause(FLOW)

    def resume_body(self) -> None:
        """The handler caught up."""
        self._resume(FLOW)
        self._last_data = self._loop.time()

    def _pause(self, reason: int) -> None:
        if not self._pauses and not self.closing:
            self._transport.pause_reading()  # type: ignore[union-attr]
        self._pauses |= reason

    def _resume(self, reason: int) -> None:
        if self._pauses & reason:
            self._pauses &= ~reason
            if not self._pauses and not self.closing:
                self._transport.resume_reading()  # type: ignore[union-attr]

    # deadlines, checked by the server's sweep

    def shutdown(self) -> None:
        """Server shutdown: finish the request in flight (if any), then close."""
        self._stop()
        self._discard = True
        self._queue.clear()
        if self._active is None:
            self._close()

    def check(self, now: float) -> None:
        """Close the connection if one of its deadlines passed."""
        config = self._config
        if self.closing:
            return
        if self._write_paused and now - self._write_paused_at > config.write_timeout:
            self._counters.count("write_timeout")
            self.abort()
            return
        active = self._active
        if active is None:
            if self._in_head:
                if now - self._head_started > config.header_timeout:
                    self._timed_out_head()
            elif now - max(self._idle_since, self._last_data) > config.keepalive_timeout:
                self._counters.idle_closed += 1
                self._close()
            return
        request = active.request
        body = request.body
        if body.done or body.failed or self._pauses & FLOW:
            return
        if request.expects_continue and not request.continued:
            return
        if now - self._last_data > config.body_timeout:
            self._counters.count("body_timeout")
            self._stop()
            body.fail(_counted(RequestTimeout("request body not received in time")))

    def _timed_out_head(self) -> None:
        self._counters.count("header_timeout")
        self._owed_error = (408, "request head not received in time")
        self._stop()
        self._answer_owed()


class _NoFlow:
    def pause_body(self) -> None:
        """Nothing to pause."""

    def resume_body(self) -> None:
        """Nothing to resume."""


_EMPTY = BodyBuffer(_NoFlow(), 1)
_EMPTY.finish()
_KINDS = {413: "body_too_large", 408: "body_timeout"}


def _counted(error: RequestError) -> RequestError:
    """An error the connection has already counted."""
    error.counted = True
    return error
