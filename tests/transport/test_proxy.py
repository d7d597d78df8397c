"""A minimal proxy built from the server and the pool, end to end on real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import tracemalloc
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from guardproxy.testing import PATTERN, serving, upstream_app
from guardproxy.transport import PoolConfig

from .support import ProxyStats, RawClient, port_of, proxying, raw_upstream, read_request

MB = 1 << 20


@pytest.fixture
async def upstream_port() -> AsyncIterator[int]:
    """The shared aiohttp test upstream."""
    async with serving(upstream_app()) as url:
        yield port_of(url)


async def test_upstream_dropping_connections_after_errors_costs_no_good_request() -> None:
    # Like MLServer (uvicorn) after a bad request: a 500 without `Connection: close`, then the
    # connection is closed; here the close crosses the next request, the worst timing.
    async def model_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            if head.startswith(b"POST /bad"):
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n\r\nbad")
                await reader.read(1)
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")

    # The proxy reads each body first, as guarded routes do: only a replayable body is resent.
    async with raw_upstream(model_server) as port, proxying(port, buffered=True) as (proxy, pool):
        client = await RawClient.open(proxy)
        statuses = []
        for i in range(1000):
            path = b"/bad" if i % 2 else b"/good"
            head = b" HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}"
            await client.send(b"POST " + path + head)
            statuses.append((await client.answer()).status)
        client.close()
        assert statuses == [200, 500] * 500
        assert pool.status()["retried"] == 499  # every good request after a bad one
        assert pool.status()["errors"] == {}


async def test_fifty_megabytes_each_way_with_bounded_memory(upstream_port: int) -> None:
    size, stats = 50 * MB, ProxyStats()
    expected = hashlib.sha256(PATTERN * (size // len(PATTERN))).hexdigest()

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(size // len(PATTERN)):
            yield PATTERN

    tracemalloc.start()
    try:
        async with proxying(upstream_port, stats=stats) as (proxy, _):
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{proxy}"
                async with session.post(f"{url}/upload", data=upload()) as response:
                    assert await response.json() == {"size": size, "sha256": expected}
                async with session.get(f"{url}/bytes/{size}") as response:
                    digest = hashlib.sha256()
                    async for chunk in response.content.iter_chunked(MB):
                        digest.update(chunk)
                    assert digest.hexdigest() == expected
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats.request_peak <= 64 * 1024 + MB
    assert stats.response_peak <= 64 * 1024 + MB
    assert stats.write_buffer_peak <= 4 * MB
    assert peak < 20 * MB  # nothing held 50 MB at once


async def test_server_sent_events_arrive_one_by_one_as_written() -> None:
    gates = [asyncio.Event() for _ in range(3)]

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, gate in enumerate(gates):
            await response.write(b"data: %d\n\n" % i)
            await gate.wait()  # the next event only after the client saw this one
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/events", events)
    async with serving(app) as url, proxying(port_of(url)) as (proxy, _):
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{proxy}/events") as response:
                assert response.headers["Content-Type"] == "text/event-stream"
                for i, gate in enumerate(gates):
                    line = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
                    assert line == b"data: %d\n\n" % i
                    gate.set()


async def test_chunked_head_and_continue_pass_through(upstream_port: int) -> None:
    async with proxying(upstream_port) as (proxy, _):
        client = await RawClient.open(proxy)
        await client.send(
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        answer = await client.answer()
        doc = json.loads(answer.body)
        assert (doc["chunked"], doc["body_length"]) == (True, 3)
        assert answer.header(b"set-cookie") == b"a=1"
        await client.send(b"HEAD /echo HTTP/1.1\r\nHost: h\r\n\r\n")
        head = await client.answer(head_request=True)
        assert head.status == 200 and head.header(b"content-length") is not None
        await client.send(
            b"PUT /echo HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        assert (await client.answer()).status == 100
        await client.send(b"hello")
        assert json.loads((await client.answer()).body)["body_length"] == 5
        await client.send(b"GET /bytes/100000 HTTP/1.1\r\nHost: h\r\n\r\n")
        download = await client.answer()
        assert download.chunked and len(download.body) == 100000


async def test_upstream_failures_become_502_and_504(upstream_port: int) -> None:
    config = PoolConfig(read_timeout=0.2)
    async with proxying(upstream_port, pool_config=config) as (proxy, pool):
        client = await RawClient.open(proxy)
        await client.send(b"GET /slow/0.6 HTTP/1.1\r\nHost: h\r\n\r\n")
        stalled = await client.answer()
        assert (stalled.status, stalled.body) == (504, b"upstream timed out")
        await client.send(b"GET /reset HTTP/1.1\r\nHost: h\r\n\r\n")
        with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
            await client.answer()  # the client never takes the short body as complete
        assert pool.status()["errors"] == {"timeout_read": 1, "reset": 1}
    with socket.socket() as bound:  # bound, not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        async with proxying(bound.getsockname()[1]) as (dead_end, _):
            client = await RawClient.open(dead_end)
            await client.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            refused = await client.answer()
    assert refused.status == 502 and refused.body.startswith(b"upstream unreachable")
