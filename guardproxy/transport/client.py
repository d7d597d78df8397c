"""A keep-alive pool to one upstream origin, with per-key concurrency and one safe retry."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterable
from typing import Any

from .config import PoolConfig
from .counters import PoolCounters
from .errors import UpstreamError
from .framing import request_head
from .headers import HeaderPairs
from .limiter import KeyLimiter
from .origin import IDLE, OriginConnection
from .upstream_response import UpstreamResponse

Body = bytes | AsyncIterable[bytes] | None


class Pool:
    """Requests to http://host:port over reused connections."""

    def __init__(self, host: str, port: int, config: PoolConfig | None = None) -> None:
        self.host = host
        self.port = port
        self.config = config = config or PoolConfig()
        self.counters = PoolCounters()
        self.limiter = KeyLimiter(config.per_key, config.queue_per_key, config.queue_timeout)
        self._idle: list[OriginConnection] = []
        self._open: set[OriginConnection] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._address: str | None = host if _is_ip(host) else None
        self._closed = False
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._host_line = b"host: " + authority.encode("idna") + b"\r\n"

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: HeaderPairs,
        body: Body = None,
        *,
        key: str = "",
        content_length: int | None = None,
    ) -> UpstreamResponse:
        """Send one request; the answer's head comes back, its body is read from it.

        bytes bodies go with a Content-Length and may be sent twice (the retry rule in the
        package README); an async iterable is streamed, chunked unless `content_length`.
        Framing and Connection headers given are dropped; Host is added when missing.
        """
        if self._closed:
            raise UpstreamError(502, "closed", "upstream pool is closed")
        streamed = body is not None and not isinstance(body, bytes)
        if isinstance(body, bytes):
            framing = b"content-length: %d\r\n" % len(body)
        elif body is None:
            framing = b""
        elif content_length is not None:
            framing = b"content-length: %d\r\n" % content_length
        else:
            framing = b"transfer-encoding: chunked\r\n"
        head = request_head(method, target, headers, self._host_line, framing)
        limiter = self.limiter
        try:
            if not limiter.try_acquire(key):
                await limiter.acquire(key)
        except UpstreamError as exc:
            self.counters.count(exc.kind)
            raise
        self.counters.requests += 1
        try:
            response, connection = await self._send(
                head, method == b"HEAD", body, streamed, content_length
            )
        except BaseException as exc:
            limiter.release(key)
            if isinstance(exc, UpstreamError):
                self.counters.count(exc.kind)
            raise
        response.bind(lambda r: self._released(r, key, connection))
        return response

    async def _send(
        self, head: bytes, head_only: bool, body: Body, streamed: bool, length: int | None
    ) -> tuple[UpstreamResponse, OriginConnection]:
        connection = self._take_idle()
        if connection is not None:
            self.counters.reused += 1
            try:
                response = await self._exchange(connection, head, head_only, body, streamed, length)
                return response, connection
            except UpstreamError as exc:
                if not exc.retryable or streamed:
                    raise
                self.counters.retried += 1
        connection = await self._connect()
        response = await self._exchange(connection, head, head_only, body, streamed, length)
        return response, connection

    async def _exchange(
        self,
        connection: OriginConnection,
        head: bytes,
        head_only: bool,
        body: Body,
        streamed: bool,
        length: int | None,
    ) -> UpstreamResponse:
        payload = body if isinstance(body, bytes) else None
        total = self.config.total_timeout
        waiter = connection.begin(head, payload, streamed, head_only, total)
        if streamed:
            pump = asyncio.get_running_loop().create_task(
                _pump(connection, body, length)  # type: ignore[arg-type]
            )
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)
        try:
            return await waiter
        except asyncio.CancelledError:
            connection.abandon()
            raise

    def _take_idle(self) -> OriginConnection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.state == IDLE and not connection.closing:
                return connection
        return None

    async def _connect(self) -> OriginConnection:
        loop = asyncio.get_running_loop()
        config = self.config
        try:
            async with asyncio.timeout(config.connect_timeout):
                address = self._address or await self._resolve()
                _, connection = await loop.create_connection(
                    lambda: OriginConnection(self, config), address, self.port
                )
        except TimeoutError:
            raise UpstreamError(504, "timeout_connect", "upstream connect timed out") from None
        except OSError as exc:
            self._address = self.host if _is_ip(self.host) else None
            reason = exc.strerror or type(exc).__name__
            raise UpstreamError(502, "refused", f"upstream unreachable: {reason}") from None
        self.counters.connects += 1
        self._open.add(connection)
        if self._sweep is None:
            self._sweep = loop.call_later(config.tick, self._check)
        return connection

    async def _resolve(self) -> str:
        # Resolved once and kept until a connect fails: no resolver call per connection.
        infos = await asyncio.get_running_loop().getaddrinfo(self.host, self.port, type=1)
        self._address = str(infos[0][4][0])
        return self._address

    def _released(self, response: UpstreamResponse, key: str, connection: OriginConnection) -> None:
        self.limiter.release(key)
        if not response.body.done:
            response.body.fail(UpstreamError(502, "released", "answer released before its end"))
            if connection.serves(response):
                connection.abandon()

    # what connections tell the pool

    def on_idle(self, connection: OriginConnection) -> None:
        """A connection finished an exchange and may be reused."""
        if self._closed or len(self._idle) >= self.config.max_idle:
            connection.close()
        else:
            self._idle.append(connection)

    def on_lost(self, connection: OriginConnection) -> None:
        """A connection closed."""
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)
            self.counters.idle_closed += 1

    def on_body_error(self, error: UpstreamError) -> None:
        """An answer's body failed after its head was handed out."""
        self.counters.count(error.kind)

    def _check(self) -> None:
        now = asyncio.get_running_loop().time()
        for connection in list(self._open):
            connection.check(now)
        self._sweep = None
        if self._open and not self._closed:
            self._sweep = asyncio.get_running_loop().call_later(self.config.tick, self._check)

    def status(self) -> dict[str, Any]:
        """Counters for /status."""
        self.counters.open = len(self._open)
        self.counters.idle = len(self._idle)
        return {**self.counters.as_dict(), "keys": self.limiter.as_dict()}

    async def close(self) -> None:
        """Close every connection; requests still running fail."""
        self._closed = True
        for pump in list(self._pumps):
            pump.cancel()
        for connection in list(self._open):
            connection.abandon()
        self._idle.clear()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        await asyncio.sleep(0)


async def _pump(
    connection: OriginConnection, body: AsyncIterable[bytes], length: int | None
) -> None:
    """Stream a request body; a failing source fails the exchange with its own error."""
    sent = 0
    chunked = length is None
    try:
        async for chunk in body:
            if not chunk:
                continue
            sent += len(chunk)
            if length is not None and sent > length:
                raise ValueError("request body longer than its content_length")
            connection.send_chunk(chunk, chunked)
            if connection.write_paused:
                await connection.drain()
            if connection.closing:
                return
        if length is not None and sent != length:
            raise ValueError("request body shorter than its content_length")
        connection.end_body(chunked)
    except UpstreamError:
        return  # the connection failed: whoever waits on it has been told
    except asyncio.CancelledError:
        connection.abandon()
        raise
    except Exception as exc:
        connection.abandon(exc)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
