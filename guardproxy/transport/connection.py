"""One client connection: run the handler for each parsed request in turn, frame answers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterable
from typing import cast

from .body import BodyBuffer
from .errors import ClientDisconnected, RequestError, RequestTimeout, counted
from .framing import CONTINUE
from .headers import Headers
from .intake import FLOW, PIPELINE, Intake, log
from .request import Request
from .response import ResponseWriter
from .shared import Shared

RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
LINGER_TIME, LINGER_BYTES = 2.0, 4 << 20  # reading after an early answer, at most


class ServerConnection(Intake):
    """Requests answered in order; the next one is handled only after the previous ended."""

    def __init__(self, shared: Shared) -> None:
        super().__init__(shared.config, shared.counters)
        self._shared = shared
        self.write_paused = False  # writers must wait for the client to read
        self._write_paused_at = 0.0
        self._drain: asyncio.Future[None] | None = None
        self._idle_since = self._last_data
        self._linger_until = 0.0
        self._checked = self._last_data  # when the deadline sweep last looked
        self._receiving = 0.0  # seconds the active request's body was awaited, pauses excluded
        self._client = ""  # the client's address, whose open connections are counted
        self.closed = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with the server."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        shared, config = self._shared, self._config
        self.peer = transport.get_extra_info("peername")
        self._client = self.peer[0] if isinstance(self.peer, tuple) else ""
        held = shared.clients.get(self._client, 0)
        # Over a limit, the connection is closed before any byte is read: no answer is owed.
        if config.max_connections is not None and len(shared.connections) >= config.max_connections:
            self._turn_away(transport, "connection_limit")
            return
        limit = config.max_connections_per_client
        if limit is not None and held >= limit:
            self._turn_away(transport, "client_connection_limit")
            return
        shared.clients[self._client] = held + 1
        shared.connections.add(self)
        shared.gone.clear()
        self._counters.connections += 1
        self._counters.open += 1

    def _turn_away(self, transport: asyncio.BaseTransport, kind: str) -> None:
        """Close a connection over a limit as it is accepted, counted under `kind`."""
        self._counters.count(kind)
        self.closed = self._stopped = self._discard = True
        transport.close()

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
        if self not in self._shared.connections:
            return  # closed as it was accepted: over the connection limit
        self.closed = True
        self._stopped = self._discard = True
        shared = self._shared
        shared.connections.discard(self)
        held = shared.clients.pop(self._client) - 1
        if held:
            shared.clients[self._client] = held
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
        self.write_paused = True
        self._write_paused_at = self._loop.time()

    def resume_writing(self) -> None:
        """The transport's buffer drained: wake writers, or take the request held back."""
        self.write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)
        if self._next_held:
            self._next_held = False
            self._next()

    def _answer_owed(self) -> None:
        """Nothing is in flight: send the owed error, or just close."""
        owed, self._owed_error = self._owed_error, None
        self._discard = True
        if owed is not None and not self.closing:
            headers, body = self._shared.errors(owed[0], owed[1], None)
            request = Request(self, b"GET", b"", "1.1", Headers([]), self.peer, False, _EMPTY)
            ResponseWriter(self, request).send(owed[0], headers, body)
        self._close(linger=True)

    # dispatch

    def _start(self, request: Request) -> None:
        writer = ResponseWriter(self, request)
        self._active = writer
        self._receiving = 0.0
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
            self._close(linger=not writer.request.body.done)
            return
        if self.write_paused:
            # A client that does not read its answers gets no more of them made: pipelined
            # requests would each add an answer to the transport's buffer.
            self._next_held = True
            return
        self._next()

    def _next(self) -> None:
        """Nothing is being answered: start the next request, or wait for one."""
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
        # A body already complete needs no invitation; skipping the header lookup matters here.
        if not request.continued and not request.body.done and request.expects_continue:
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
        return self.closed or self._linger_until > 0 or transport is None or transport.is_closing()

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
        if self.write_paused:
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

    def _close(self, linger: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if linger and self._linger_until:
            return
        if linger and transport.can_write_eof():
            # Closing on unread bytes sends a reset, which can destroy the answer before the
            # client reads it: half-close instead, and drop what the client still sends.
            self._stopped = self._discard = True
            self._linger_until = self._loop.time() + LINGER_TIME
            transport.write_eof()
            if self._pauses:
                self._pauses = 0
                transport.resume_reading()
            return
        transport.close()

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
        step, self._checked = now - self._checked, now
        if self._linger_until and not self.closed:
            if now > self._linger_until or self._dropped > LINGER_BYTES:
                self._close()
            return
        if self.closing:
            return
        if self.write_paused and now - self._write_paused_at > config.write_timeout:
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
            self._time_out_body(body, "body_timeout", "request body not received in time")
            return
        self._receiving += step
        rate = config.body_min_rate
        if rate and self._receiving > config.body_timeout + body.received / rate:
            self._time_out_body(body, "body_too_slow", "request body arriving too slowly")

    def _time_out_body(self, body: BodyBuffer, kind: str, message: str) -> None:
        self._counters.count(kind)
        self._stop()
        body.fail(counted(RequestTimeout(message)))

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
