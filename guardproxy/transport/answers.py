"""Answers off one upstream connection, parsed with llhttp: heads, bodies, 1xx, HEAD."""

from __future__ import annotations

import asyncio

import httptools

from .body import BodyBuffer
from .config import PoolConfig
from .errors import UpstreamError
from .framing import NO_BODY_STATUS, chunked_only
from .headers import HeaderList, Headers
from .upstream_response import UpstreamResponse

IDLE, BUSY, CLOSED = 0, 1, 2


class _Violation(Exception):
    """The upstream broke the protocol in a way llhttp does not see."""


class AnswerParser(asyncio.Protocol):
    """The parsing half of an upstream connection; the exchange half subclasses it."""

    def __init__(self, config: PoolConfig) -> None:
        self._config = config
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.state = IDLE
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._reason = b""
        self._headers: HeaderList = []
        self._head_size = 0
        self._in_head = False  # header lines are the head's; after it, a chunked body's trailers
        self._interim = False
        self._head_only = False  # the request was HEAD: no body follows the head
        self._until_close = False  # the body ends when the upstream closes
        self._phantom_body = False  # the head declares a body that must not follow it
        self._swap_parser = False
        self._received_any = False
        self._last_data = 0.0

    # what the exchange half provides

    def _complete(self) -> None:
        raise NotImplementedError

    def _fail(self, error: BaseException) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection."""
        raise NotImplementedError

    def pause_body(self) -> None:
        """The caller is behind on reading the answer."""
        raise NotImplementedError

    def resume_body(self) -> None:
        """It caught up."""
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        """Feed the parser; an idle connection must not receive anything."""
        self._last_data = self._loop.time()
        self._received_any = True
        if self.state != BUSY:
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError(502, "protocol", "upstream switched protocols"))
        except httptools.HttpParserError:
            self._fail(UpstreamError(502, "protocol", "upstream sent a malformed answer"))
        if self._swap_parser:
            self._swap_parser = False
            self._parser = httptools.HttpResponseParser(self)

    # llhttp callbacks

    def on_message_begin(self) -> None:
        """A new answer (or an interim 1xx); none may come unasked."""
        if self.state != BUSY or (self._waiter is None and not self._interim):
            raise _Violation
        self._reason = b""
        self._headers = []
        self._head_size = 0
        self._in_head = True

    def on_status(self, reason: bytes) -> None:
        """Part of the reason phrase."""
        self._reason += reason
        self._grow(len(reason))

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header line; a trailer is counted against the same limit, and dropped."""
        if self._in_head:
            # The answer's Headers share this list: a trailer appended to it would turn up
            # among the headers of an answer whose body was read.
            self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4  # _grow, inline: a call per header less
        if self._head_size > self._config.max_head_size:
            raise _Violation

    def _grow(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self._config.max_head_size:
            raise _Violation

    def on_headers_complete(self) -> None:
        """The head is complete: hand the answer to the caller."""
        self._in_head = False
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise _Violation
            self._interim = True  # 100 Continue, 103 Early Hints: wait for the real answer
            return
        headers = Headers(self._headers)
        bodiless = self._head_only or status in NO_BODY_STATUS
        codings = headers.getall(b"transfer-encoding")
        if codings and not bodiless and not chunked_only(codings):
            raise _Violation  # its coding would be lost with the framing
        keep_alive = parser.should_keep_alive()
        body = BodyBuffer(self, self._config.high_water)
        response = UpstreamResponse(
            status, self._reason, parser.get_http_version(), headers, keep_alive, body
        )
        self._response = response
        if bodiless:
            # A server that sends the declared body anyway, in a later packet, would have it
            # read as the answer to the next request on this connection: it is not reused.
            self._phantom_body = bool(codings) or _declares_length(headers)
        elif not keep_alive:
            # Neither length nor chunked: the body ends when the upstream closes.
            self._until_close = not codings and b"content-length" not in headers
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if self._head_only:
            self._swap_parser = True  # llhttp would wait for a body a HEAD answer never has
            self._complete()

    def on_body(self, body: bytes) -> None:
        """Part of the body."""
        if self._response is None:
            raise _Violation
        self._response.body.feed(body)

    def on_message_complete(self) -> None:
        """The answer is complete."""
        if self._interim:
            self._interim = False
        elif self._response is not None:
            self._complete()


def _declares_length(headers: Headers) -> bool:
    return any(value.strip() != b"0" for value in headers.getall(b"content-length"))
