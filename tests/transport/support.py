"""Test helpers: polling, a raw HTTP/1.1 client, servers on free ports, a minimal proxy."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from guardproxy.transport import (
    ErrorBuilder,
    Handler,
    Pool,
    PoolConfig,
    Request,
    ResponseWriter,
    Server,
    ServerConfig,
    UpstreamError,
    json_error,
)

# Hop-by-hop headers (RFC 9110 7.6.1) plus those the transport frames itself.
HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"host",
        b"content-length",
    }
)


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Poll `check` until it holds; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@dataclass
class Answer:
    """A response as read off the wire by RawClient."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool = False

    def header(self, name: bytes) -> bytes | None:
        """First value of a header, any case."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class RawClient:
    """A socket that sends exact bytes and parses answers independently of the code tested."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls, port: int, receive_buffer: int | None = None, source: str = "127.0.0.1"
    ) -> RawClient:
        """Connect to 127.0.0.1:port from `source` (any 127.x.y.z address is this host);
        with `receive_buffer`, the socket takes in at most about that much (and the reader
        128 KiB) while the client does not read."""
        if receive_buffer is None:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, limit=1 << 20, local_addr=(source, 0)
            )
            return cls(reader, writer)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        """Write bytes as they are."""
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, head_request: bool = False, within: float = 5.0) -> Answer:
        """Read one answer: Content-Length, chunked or close-delimited."""
        return await asyncio.wait_for(self._answer(head_request), within)

    async def _answer(self, head_request: bool) -> Answer:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        _, status, *reason = lines[0].split(b" ", 2)
        headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
        answer = Answer(int(status), reason[0] if reason else b"", headers, b"")  # type: ignore[arg-type]
        if head_request or answer.status in (204, 304) or answer.status < 200:
            return answer
        length = answer.header(b"content-length")
        if length is not None:
            answer.body = await self.reader.readexactly(int(length))
        elif (answer.header(b"transfer-encoding") or b"").lower() == b"chunked":
            answer.chunked = True
            answer.body = await self._chunks()
        else:
            answer.body = await self.reader.read()
        return answer

    async def _chunks(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            assert await self.reader.readexactly(2) == b"\r\n"

    async def closed(self, within: float = 5.0) -> bool:
        """Whether the server closes the connection (EOF or reset) with nothing more sent."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), within)
        except ConnectionResetError:
            return True
        return rest == b""

    def close(self) -> None:
        """Close the socket."""
        self.writer.close()


@dataclass
class Running:
    """A started server and its port."""

    server: Server
    port: int


@asynccontextmanager
async def serving(
    handler: Handler, config: ServerConfig | None = None, errors: ErrorBuilder = json_error
) -> AsyncIterator[Running]:
    """Run a Server with `handler` on a free loopback port."""
    server = Server(handler, config, errors)
    port = await server.start("127.0.0.1", 0)
    try:
        yield Running(server, port)
    finally:
        await server.shutdown(1.0)


@dataclass
class ProxyStats:
    """What the minimal proxy observed, for assertions on bounded memory."""

    request_peak: int = 0
    response_peak: int = 0
    write_buffer_peak: int = 0


def proxy_handler(pool: Pool, stats: ProxyStats | None = None, buffered: bool = False) -> Handler:
    """The smallest faithful proxy: headers minus hop-by-hop, bodies streamed both ways."""
    seen = stats or ProxyStats()

    async def handle(request: Request, response: ResponseWriter) -> None:
        headers = [(k, v) for k, v in request.headers if k.lower() not in HOP]
        length = request.content_length
        body: bytes | AsyncIterator[bytes] | None = None
        if buffered:
            body = await request.read(1 << 20)
        elif length or b"transfer-encoding" in request.headers:
            body = request.stream()
        key = (request.headers.get(b"x-key") or b"").decode()
        try:
            upstream = await pool.request(
                request.method, request.target, headers, body, key=key, content_length=length
            )
        except UpstreamError as exc:
            response.send(
                exc.status, [(b"content-type", b"application/json")], exc.message.encode()
            )
            return
        try:
            kept = [
                (k, v) for k, v in upstream.headers if k.lower() not in HOP - {b"content-length"}
            ]
            response.start(upstream.status, kept, upstream.reason)
            async for chunk in upstream.stream():
                await response.write(chunk)
                seen.write_buffer_peak = max(seen.write_buffer_peak, response.buffered)
            response.end()
        except UpstreamError:
            response.abort()
        finally:
            upstream.release()
            seen.request_peak = max(seen.request_peak, request.buffered_peak)
            seen.response_peak = max(seen.response_peak, upstream.buffered_peak)

    return handle


@asynccontextmanager
async def proxying(
    upstream_port: int,
    pool_config: PoolConfig | None = None,
    server_config: ServerConfig | None = None,
    stats: ProxyStats | None = None,
    buffered: bool = False,
) -> AsyncIterator[tuple[int, Pool]]:
    """The minimal proxy in front of 127.0.0.1:upstream_port; yields its port and pool."""
    pool = Pool("127.0.0.1", upstream_port, pool_config)
    try:
        async with serving(proxy_handler(pool, stats, buffered), server_config) as running:
            yield running.port, pool
    finally:
        await pool.close()


def port_of(url: str) -> int:
    """The port of an http://host:port URL."""
    return int(url.rsplit(":", 1)[1])


Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "asyncio.Future[None] | Any"]


@asynccontextmanager
async def raw_upstream(behave: Behaviour) -> AsyncIterator[int]:
    """A raw asyncio server running `behave(reader, writer)` per connection; yields its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await behave(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the peer went away, or the test is over
        finally:
            tasks.discard(task)
            writer.close()

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.sleep(0)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request off the wire (Content-Length bodies only): its head and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length) if length else b""
