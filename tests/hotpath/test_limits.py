"""Limits on the data port: upstream slots per model, the wait queue, slow clients, body sizes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import islice
from typing import Any

import aiohttp
from aiohttp import web

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import build_model_app, v2_request
from guardproxy.hotpath.upstream import Limits
from guardproxy.testing import RunningProxy, eventually, proxy_settings, running_proxy, serving
from tests.transport.support import RawClient, port_of

INFER = "/v2/models/adult/infer"
ROWS = list(islice(adult_rows(), 2))
SLOW_UPLOAD = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000


class Uploads:
    """An upstream /upload that reads bodies to their end, counting uploads in progress."""

    def __init__(self) -> None:
        self.running = self.peak = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            size = 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
            return web.json_response({"size": size})
        finally:
            self.running -= 1

    async def download(self, request: web.Request) -> web.StreamResponse:
        """Streams 64 MiB, 64 KiB at a time, for as long as the reader takes it."""
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(1024):
            await response.write(bytes(65536))
        await response.write_eof()
        return response


@asynccontextmanager
async def model_and_uploads(**settings: Any) -> AsyncIterator[tuple[RunningProxy, Uploads]]:
    """The demo model plus /upload behind one upstream; guardproxy in front of it."""
    uploads = Uploads()
    app = build_model_app()
    app.router.add_post("/upload", uploads.handle)
    app.router.add_get("/download", uploads.download)
    async with serving(app) as url, running_proxy(proxy_settings(url, **settings)) as proxy:
        yield proxy, uploads


def keys(proxy: RunningProxy) -> dict[str, Any]:
    """Requests active and waiting per pool key."""
    found: dict[str, Any] = proxy.runtime.upstream.status()["keys"]
    return found


async def slow_uploads(proxy: RunningProxy, n: int) -> list[RawClient]:
    """n clients that send a head promising 1 MB, 1000 bytes of it, then nothing."""
    clients = [await RawClient.open(port_of(proxy.url)) for _ in range(n)]
    for slow in clients:
        await slow.send(SLOW_UPLOAD)
    return clients


async def test_slow_uploads_hold_only_the_unguarded_slots(
    client: aiohttp.ClientSession,
) -> None:
    limits = Limits(per_key=8, queue=256, queue_timeout=60)
    async with model_and_uploads(limits=limits) as (proxy, uploads):
        slow = await slow_uploads(proxy, 150)
        await eventually(lambda: keys(proxy).get("unguarded") == {"active": 8, "waiting": 142})
        loop = asyncio.get_running_loop()
        for _ in range(20):
            began = loop.time()
            async with client.post(proxy.url + INFER, json=v2_request(ROWS)) as response:
                assert response.status == 200
                assert response.headers["X-Guard-Decision"]
            assert loop.time() - began < 2.0  # answered while every unguarded slot is held
        assert uploads.peak == 8  # the upstream never saw more than the key's slots
        for each in slow:
            each.close()
        await eventually(lambda: keys(proxy) == {})
    assert proxy.runtime.proxy.counts.guarded == 20


async def test_a_full_wait_queue_answers_503_at_once() -> None:
    async with model_and_uploads(limits=Limits(per_key=2, queue=3)) as (proxy, _):
        slow = await slow_uploads(proxy, 5)
        await eventually(lambda: keys(proxy).get("unguarded") == {"active": 2, "waiting": 3})
        (extra,) = await slow_uploads(proxy, 1)
        answer = await extra.answer()
        assert answer.status == 503
        assert b"waiting for the upstream" in answer.body and b"request_id" in answer.body
        assert proxy.runtime.proxy.counts.upstream_errors == {503: 1}
        for each in [*slow, extra]:
            each.close()


async def test_a_client_silent_mid_body_gets_408() -> None:
    async with model_and_uploads(body_timeout=0.3) as (proxy, uploads):
        (slow,) = await slow_uploads(proxy, 1)
        answer = await slow.answer()
        assert answer.status == 408 and b"request_id" in answer.body
        assert await slow.closed()
        status = proxy.runtime.status()
        assert status["data_port"]["errors"] == {"body_timeout": 1}
        assert status["requests"]["refused"] == {"408": 1}
        await eventually(lambda: uploads.running == 0 and keys(proxy) == {})


async def test_uploads_trickling_below_the_minimum_rate_give_their_slots_back() -> None:
    limits = Limits(per_key=2, queue=0)
    async with model_and_uploads(limits=limits, body_timeout=0.3, body_min_rate=1000) as (
        proxy,
        uploads,
    ):
        slow = await slow_uploads(proxy, 2)
        await eventually(lambda: keys(proxy).get("unguarded") == {"active": 2, "waiting": 0})

        async def trickle(client: RawClient) -> None:
            while True:  # a byte every 0.1 s: never silent for the body timeout
                await client.send(b"x")
                await asyncio.sleep(0.1)

        sending = [asyncio.create_task(trickle(each)) for each in slow]
        answers = [await each.answer() for each in slow]
        for task in sending:
            task.cancel()
        assert [a.status for a in answers] == [408, 408]
        assert all(b"arriving too slowly" in a.body for a in answers)
        status = proxy.runtime.status()
        assert status["data_port"]["errors"] == {"body_too_slow": 2}
        await eventually(lambda: uploads.running == 0 and keys(proxy) == {})
        client = await RawClient.open(port_of(proxy.url))
        await client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        assert (await client.answer()).status == 200  # the slots are free again


async def test_a_client_silent_mid_head_gets_408() -> None:
    async with model_and_uploads(header_timeout=0.3) as (proxy, _):
        slow = await RawClient.open(port_of(proxy.url))
        await slow.send(b"POST /v2/models/adult/infer HTTP/1.1\r\nHost: t\r\n")
        answer = await slow.answer()
        assert answer.status == 408
        assert await slow.closed()
        assert proxy.runtime.status()["data_port"]["errors"] == {"header_timeout": 1}


async def test_a_guarded_body_over_the_limit_is_413_json(client: aiohttp.ClientSession) -> None:
    async with model_and_uploads(max_body=1000) as (proxy, _):
        body = b'{"inputs": [], "pad": "' + b"x" * 2000 + b'"}'
        headers = {"X-Request-Id": "big-1", "Content-Type": "application/json"}
        async with client.post(proxy.url + INFER, data=body, headers=headers) as response:
            doc = await response.json()
        assert response.status == 413
        assert doc["request_id"] == "big-1" and "1000 bytes" in doc["error"]
        assert proxy.runtime.proxy.counts.refused == {413: 1}


async def test_an_unread_streamed_answer_is_cut_off_after_the_write_timeout() -> None:
    async with model_and_uploads(limits=Limits(per_key=1, queue=0), write_timeout=0.5) as (
        proxy,
        _,
    ):
        reader = await RawClient.open(port_of(proxy.url), receive_buffer=16384)
        await reader.send(b"GET /download HTTP/1.1\r\nHost: t\r\n\r\n")  # and reads nothing
        await eventually(lambda: keys(proxy).get("unguarded") == {"active": 1, "waiting": 0})
        status = proxy.runtime.status
        await eventually(lambda: status()["data_port"]["errors"].get("write_timeout") == 1)
        await eventually(lambda: keys(proxy) == {})  # the slot is free again
        client = await RawClient.open(port_of(proxy.url))
        await client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        assert (await client.answer()).status == 200
