"""One keep-alive connection to the upstream: send a request, hand out its answer."""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

from .answers import BUSY, CLOSED, IDLE, AnswerParser
from .config import PoolConfig
from .errors import UpstreamError
from .framing import LAST_CHUNK, chunk_size
from .upstream_response import UpstreamResponse

__all__ = ["BUSY", "CLOSED", "IDLE", "Keeper", "OriginConnection"]


class Keeper(Protocol):
    """The pool, as its connections see it."""

    def on_idle(self, connection: OriginConnection) -> None:
        """An exchange completed and the connection can serve another."""

    def on_lost(self, connection: OriginConnection) -> None:
        """The connection closed."""

    def on_body_error(self, error: UpstreamError) -> None:
        """An answer failed after its head was handed out."""


class OriginConnection(AnswerParser):
    """Serves one exchange at a time; reusable only after a complete, keep-alive answer."""

    def __init__(self, keeper: Keeper, config: PoolConfig) -> None:
        super().__init__(config)
        self._keeper = keeper
        self.served = 0  # answers completed on this connection
        self.idle_since = self._loop.time()
        self._sent_all = False
        self._deadline: float | None = None
        self._paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Connected."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def eof_received(self) -> bool:
        """The upstream closed its side: the end of a close-delimited answer, or a failure."""
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Closed, by either side."""
        self._ended(exc)
        self.state = CLOSED
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(UpstreamError(502, "reset", "upstream connection lost"))
        self._keeper.on_lost(self)

    def pause_writing(self) -> None:
        """The upstream is not reading fast enough."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """It caught up."""
        self._write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _complete(self) -> None:
        response, self._response = self._response, None
        assert response is not None
        response.body.finish()
        self.served += 1
        reusable = (
            response.keep_alive
            and self._sent_all
            and not self._until_close
            and not self._phantom_body
        )
        if reusable and self.state == BUSY and not self.closing:
            self.state = IDLE
            self.idle_since = self._loop.time()
            self._keeper.on_idle(self)
        else:
            self.close()

    # one exchange

    def begin(
        self, head: bytes, body: bytes | None, streamed: bool, head_only: bool, total: float | None
    ) -> asyncio.Future[UpstreamResponse]:
        """Send a request (its body too unless streamed); returns the future of its head."""
        now = self._loop.time()
        self.state = BUSY
        self._received_any = self._interim = self._until_close = self._phantom_body = False
        self._head_only = head_only
        self._deadline = now + total if total is not None else None
        self._last_data = now
        waiter = self._waiter = self._loop.create_future()
        transport = self._transport
        assert transport is not None
        if body and len(body) > 16384:
            transport.writelines((head, body))
        else:
            transport.write(head + body if body else head)
        self._sent_all = not streamed
        return waiter

    def send_chunk(self, data: bytes, chunked: bool) -> None:
        """Part of a streamed request body."""
        if self._transport is not None and not self.closing:
            if chunked:
                self._transport.writelines((chunk_size(len(data)), data, b"\r\n"))
            else:
                self._transport.write(data)

    def end_body(self, chunked: bool) -> None:
        """The streamed body is complete: from now on silence counts against the read timeout."""
        if chunked and self._transport is not None and not self.closing:
            self._transport.write(LAST_CHUNK)
        self._sent_all = True
        self._last_data = self._loop.time()

    @property
    def write_paused(self) -> bool:
        """Whether the upstream is behind on reading."""
        return self._write_paused

    async def drain(self) -> None:
        """Wait until the upstream has read enough of what was written."""
        if self.state == CLOSED:
            raise UpstreamError(502, "reset", "upstream connection lost")
        if self._write_paused:
            drain = self._drain = self._loop.create_future()
            await drain

    def abandon(self, error: BaseException | None = None) -> None:
        """The caller gives up on the exchange: whoever waits gets `error`; close."""
        if error is not None:
            self._fail(error)
        self._waiter = self._response = None
        self.close()

    def serves(self, response: UpstreamResponse) -> bool:
        """Whether `response` is the answer this connection is receiving."""
        return self._response is response

    # failure and closing

    def _fail(self, error: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        response, self._response = self._response, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        elif response is not None:
            response.body.fail(error)
            if isinstance(error, UpstreamError):
                self._keeper.on_body_error(error)
        self.close()

    def _ended(self, exc: Exception | None) -> None:
        if self.state != BUSY:
            return
        if self._until_close and exc is None and self._response is not None:
            self._complete()  # close-delimited answer: the close is its end
        elif self._waiter is not None or self._response is not None:
            self._fail(self._closed_error(exc))
        self.state = CLOSED

    def _closed_error(self, exc: Exception | None) -> UpstreamError:
        if not self._received_any:
            # Nothing of an answer arrived: on a reused connection the request never got
            # through (the upstream had closed it), so it can safely go again.
            retry = self.served > 0
            kind = "reset" if exc is not None else "closed"
            return UpstreamError(502, kind, "upstream closed the connection", retryable=retry)
        return UpstreamError(502, "reset", "upstream closed the connection mid-answer")

    @property
    def closing(self) -> bool:
        """Whether the transport is closed or closing."""
        transport = self._transport
        return self.state == CLOSED or transport is None or transport.is_closing()

    def close(self) -> None:
        """Close (buffered bytes are still sent); the pool hears of it in connection_lost."""
        if self.state == BUSY and (self._waiter is not None or self._response is not None):
            self._fail(UpstreamError(502, "reset", "upstream connection closed"))
            return
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # back-pressure and deadlines

    def pause_body(self) -> None:
        """The caller is behind on reading the answer."""
        self._paused = True
        if self._transport is not None and not self.closing:
            self._transport.pause_reading()

    def resume_body(self) -> None:
        """It caught up."""
        self._paused = False
        self._last_data = self._loop.time()
        if self._transport is not None and not self.closing:
            self._transport.resume_reading()

    def check(self, now: float) -> None:
        """Time out a stalled exchange; close a connection idle too long."""
        config = self._config
        if self.state == IDLE:
            if now - self.idle_since > config.idle_timeout:
                self.close()
            return
        if self.state != BUSY:
            return
        if self._deadline is not None and now >= self._deadline:
            self._fail(UpstreamError(504, "timeout_total", "upstream timed out"))
        elif (
            config.read_timeout is not None
            and self._sent_all
            and not self._paused
            and now - self._last_data > config.read_timeout
        ):
            self._fail(UpstreamError(504, "timeout_read", "upstream timed out"))
