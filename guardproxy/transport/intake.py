"""Bytes of one client connection into requests, in order, with llhttp and the head limits."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import httptools

from .body import BodyBuffer
from .config import ServerConfig
from .counters import ServerCounters
from .errors import BadRequest, counted
from .framing import chunked_only
from .headers import HeaderList, Headers
from .request import Request
from .response import ResponseWriter

log = logging.getLogger("guardproxy.transport")

FLOW, PIPELINE = 1, 2  # reasons to stop reading the socket
# What a header line costs against the head limit besides its name and value: a line of a
# few bytes still costs ~150 bytes as Python objects, so 60 KB of tiny lines cost ~18 times
# what the limit says. At 64, a head of ordinary headers is charged a few KB more.
HEADER_COST = 64


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing; the reason is already recorded."""


class Intake(asyncio.Protocol):
    """The parsing half of a server connection; the dispatching half subclasses it."""

    def __init__(self, config: ServerConfig, counters: ServerCounters) -> None:
        self._config = config
        self._counters = counters
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self._parser = self._new_parser()
        self._url = b""
        self._headers: HeaderList = []
        self._head_size = 0
        self._head_raw = 0
        self._in_head = False
        self._in_trailers = False  # a chunk header with no data after it yet: trailers may follow
        self._body_read = 0  # body bytes of the read being parsed
        self._head_started = 0.0
        self._parsing: Request | None = None  # the request whose body is being parsed
        self._active: ResponseWriter | None = None  # the request being answered
        self._queue: deque[Request] = deque()  # parsed, waiting for their turn
        self._next_held = False  # the next request waits for the client to read (connection)
        self._pauses = 0
        self._last_data = self._loop.time()
        self._stopped = False  # no further request will be parsed
        self._discard = False  # bytes received are ignored
        self._dropped = 0  # bytes ignored
        self._owed_error: tuple[int, str] | None = None

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # Bytes after a `Connection: close` request are ignored, not a parse error that
        # would replace the answer to the request before them.
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
        return parser

    # what the dispatching half provides

    @property
    def closing(self) -> bool:
        """Whether nothing more can be written."""
        raise NotImplementedError

    def want_body(self, request: Request) -> None:
        """The handler asks for the body (see ServerConnection)."""
        raise NotImplementedError

    def _start(self, request: Request) -> None:
        raise NotImplementedError

    def _answer_owed(self) -> None:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        """Feed the parser; callbacks below do the rest."""
        self._last_data = self._loop.time()
        if self._discard:
            self._dropped += len(data)
            return
        self._body_read = 0
        was_in_head = self._in_head
        self._feed(data)
        # A head still incomplete after a whole read was all head: bound it before the
        # parser's callbacks see it (they only count complete header lines). A read that
        # ends in the trailer section counts its bytes but the body's: the parser keeps an
        # unfinished trailer line, whose first bytes may share a read with the last chunk.
        if self._discard:
            return
        if was_in_head and self._in_head:
            self._head_raw += len(data)
        elif self._in_trailers:
            self._head_raw += len(data) - self._body_read
        else:
            return
        if self._head_raw > self._config.max_head_size:
            self._too_large()

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
        self._in_trailers = False

    def on_url(self, url: bytes) -> None:
        """Part of the request target."""
        self._url += url
        self._head_size += len(url)
        if self._head_size > self._config.max_head_size:
            raise self._refuse(431, "request head too large", "head_too_large")

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header line, whole; a trailer is counted against the same limit, and dropped."""
        if self._in_head:
            self._headers.append((name, value))
        self._head_size += len(name) + len(value) + HEADER_COST
        if self._head_size > self._config.max_head_size:
            raise self._too_large()

    def on_chunk_header(self) -> None:
        """A chunk starts: until its data arrives, what follows may be the trailer section."""
        self._in_trailers = True

    def on_chunk_complete(self) -> None:
        """A chunk (or, after the last one, the trailer section) ends."""
        self._in_trailers = False

    def _too_large(self) -> _Stop:
        if self._in_head:
            return self._refuse(431, "request head too large", "head_too_large")
        self._malformed("request trailers too large")
        return _Stop()

    def on_headers_complete(self) -> None:
        """The head is complete: make the request and run it, or queue it behind another."""
        self._in_head = False
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise self._refuse(505, "HTTP version not supported", "bad_version")
        method = parser.get_method()
        headers = Headers(self._headers)
        codings = headers.getall(b"transfer-encoding")
        if codings and not chunked_only(codings):
            raise self._refuse(501, "transfer coding not supported", "bad_request")
        hosts = headers.getall(b"host")
        if len(hosts) != 1:
            if hosts:
                # A front proxy may route by one, the upstream read the other
                # (X-Forwarded-Host).
                message = "malformed request: more than one Host header"
                raise self._refuse(400, message, "bad_request")
            if version == "1.1":  # RFC 9112 3.2: an HTTP/1.0 client may leave it out
                raise self._refuse(400, "malformed request: no Host header", "bad_request")
        if self._url.startswith(b"*") and (self._url != b"*" or method != b"OPTIONS"):
            # The asterisk-form is OPTIONS's alone (RFC 9112 3.2.4); a proxy reducing
            # targets to origin form would make `GET *` a request for `/*`.
            message = "malformed request: the target * is for OPTIONS only"
            raise self._refuse(400, message, "bad_request")
        if parser.should_upgrade():
            self._check_upgrade(method, headers)
        keep_alive = parser.should_keep_alive()
        body = BodyBuffer(self, self._config.high_water)
        request = Request(self, method, self._url, version, headers, self.peer, keep_alive, body)
        self._parsing = request
        if not keep_alive:
            self._stop()
        if self._active is None and not self._next_held:
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
        self._in_trailers = False
        self._body_read += len(body)
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
            parsing.body.fail(counted(BadRequest(message)))
            return
        if parsing is not None and self._queue and self._queue[-1] is parsing:
            self._queue.pop()
        self._refuse(400, message, "bad_request")

    def _stop(self) -> None:
        self._stopped = True

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
