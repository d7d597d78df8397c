"""The upstream pool against a real aiohttp server: framing, reuse, streaming, limits."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from guardproxy.testing import PATTERN, serving, upstream_app
from guardproxy.transport import Pool, PoolConfig, UpstreamError

from .support import eventually, port_of

MB = 1 << 20


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    """A pool in front of the shared test upstream (echo, bytes, upload, sse, status...)."""
    async with serving(upstream_app()) as url:
        pool = Pool("127.0.0.1", port_of(url))
        yield pool
        await pool.close()


async def echo(pool: Pool, *args: object, **kwargs: object) -> dict[str, object]:
    response = await pool.request(*args, **kwargs)  # type: ignore[arg-type]
    assert response.status == 200
    doc: dict[str, object] = json.loads(await response.read())
    return doc


async def test_target_and_headers_arrive_as_given_with_host_added(pool: Pool) -> None:
    headers = [(b"X-B", b"2"), (b"x-a", b"1"), (b"X-B", b"3"), (b"Content-Length", b"999")]
    doc = await echo(pool, b"POST", b"/echo/a%2Fb/../c?x=%20&y=1", headers, b"hello")
    assert doc["method"] == "POST"
    assert doc["path_qs"] == "/echo/a%2Fb/../c?x=%20&y=1"
    sent = [tuple(h) for h in doc["headers"]]  # type: ignore[union-attr]
    assert sent[:3] == [("X-B", "2"), ("x-a", "1"), ("X-B", "3")]
    lowered = [(k.lower(), v) for k, v in sent]
    assert ("host", f"127.0.0.1:{pool.port}") in lowered
    assert ("content-length", "5") in lowered  # ours, not the caller's 999
    assert doc["body_length"] == 5


async def test_a_given_host_header_is_kept(pool: Pool) -> None:
    doc = await echo(pool, b"GET", b"/echo", [(b"Host", b"model.example")])
    assert ["Host", "model.example"] in doc["headers"]  # type: ignore[operator]


async def test_connections_are_reused(pool: Pool) -> None:
    for _ in range(10):
        await echo(pool, b"GET", b"/echo", [])
    status = pool.status()
    assert (status["connects"], status["reused"], status["idle"]) == (1, 9, 1)


@pytest.mark.parametrize("path", [b"/status/204", b"/status/304"])
async def test_bodiless_answers_leave_the_connection_reusable(pool: Pool, path: bytes) -> None:
    assert await (await pool.request(b"GET", path, [])).read() == b""
    assert (await pool.request(b"GET", b"/echo", [])).status == 200
    assert pool.status()["connects"] == 1


async def test_a_head_answer_keeps_its_length_and_closes_its_connection(pool: Pool) -> None:
    response = await pool.request(b"HEAD", b"/echo", [])
    assert await response.read() == b""
    assert response.headers.get(b"content-length") not in (None, b"0")
    # A body declared where none may follow could still come: never read as the next answer.
    assert (await pool.request(b"GET", b"/echo", [])).status == 200
    assert pool.status()["connects"] == 2


async def test_streamed_bodies_go_chunked_or_with_the_given_length(pool: Pool) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"abc", b"", b"defg"):
            yield part

    chunked = await echo(pool, b"POST", b"/echo", [], parts())
    assert (chunked["chunked"], chunked["body_length"]) == (True, 7)
    sized = await echo(pool, b"PUT", b"/echo", [], parts(), content_length=7)
    assert (sized["chunked"], sized["body_length"]) == (False, 7)
    assert sized["body_sha256"] == hashlib.sha256(b"abcdefg").hexdigest()


async def test_a_streamed_body_that_lies_about_its_length_fails(pool: Pool) -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"abc"

    with pytest.raises(ValueError, match="shorter"):
        await pool.request(b"POST", b"/echo", [], parts(), content_length=5)


async def test_fifty_megabytes_up_and_down_with_bounded_buffers(pool: Pool) -> None:
    size = 50 * MB

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(size // len(PATTERN)):
            yield PATTERN

    response = await pool.request(b"POST", b"/upload", [], upload(), content_length=size)
    assert json.loads(await response.read()) == {
        "size": size,
        "sha256": hashlib.sha256(PATTERN * (size // len(PATTERN))).hexdigest(),
    }
    response = await pool.request(b"GET", b"/bytes/%d" % size, [])
    digest, received = hashlib.sha256(), 0
    async for chunk in response.stream():
        digest.update(chunk)
        received += len(chunk)
        await asyncio.sleep(0)  # a consumer slower than the socket
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(PATTERN * (size // len(PATTERN))).hexdigest()
    assert response.buffered_peak <= pool.config.high_water + MB


async def test_sse_chunks_come_one_by_one(pool: Pool) -> None:
    response = await pool.request(b"GET", b"/sse?n=3&interval=0.05", [])
    assert response.headers.get(b"content-type") == b"text/event-stream"
    events = [chunk async for chunk in response.stream()]
    assert events[0] == b'data: {"token": 0}\n\n'
    assert b"".join(events).count(b"data:") == 4


async def test_read_over_the_limit_fails_and_closes_the_connection(pool: Pool) -> None:
    response = await pool.request(b"GET", b"/bytes/%d" % (10 * MB), [])
    with pytest.raises(UpstreamError) as caught:
        await response.read(1000)
    assert (caught.value.status, caught.value.kind) == (502, "too_large")
    await eventually(lambda: pool.status()["open"] == 0)
    assert pool.status()["errors"] == {}  # the caller's limit, not an upstream fault


async def test_releasing_a_half_read_answer_closes_its_connection(pool: Pool) -> None:
    response = await pool.request(b"GET", b"/bytes/%d" % (10 * MB), [])
    async for _ in response.stream():
        break
    response.release()
    await eventually(lambda: pool.status()["open"] == 0)
    assert (await pool.request(b"GET", b"/echo", [])).status == 200
    assert pool.status()["connects"] == 2


async def test_gzip_and_status_codes_pass_untouched(pool: Pool) -> None:
    response = await pool.request(b"GET", b"/gzip", [])
    assert response.headers.get(b"content-encoding") == b"gzip"
    assert (await response.read())[:2] == b"\x1f\x8b"
    for code in (400, 404, 500, 503):
        response = await pool.request(b"GET", b"/status/%d" % code, [])
        assert (response.status, json.loads(await response.read())) == (code, {"status": code})


async def test_a_slow_key_does_not_block_another_key() -> None:
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="held")

    async def fast(request: web.Request) -> web.Response:
        return web.Response(text="fast")

    app = web.Application()
    app.router.add_get("/hold", hold)
    app.router.add_get("/fast", fast)
    config = PoolConfig(per_key=2, queue_per_key=1, queue_timeout=0.2)
    async with serving(app) as url:
        pool = Pool("127.0.0.1", port_of(url), config)
        held = [
            asyncio.create_task(pool.request(b"GET", b"/hold", [], key="slow")) for _ in range(2)
        ]
        await eventually(lambda: pool.status()["keys"].get("slow", {}).get("active") == 2)
        fast = await pool.request(b"GET", b"/fast", [], key="other")
        assert await fast.read() == b"fast"
        with pytest.raises(UpstreamError) as waited:
            await pool.request(b"GET", b"/fast", [], key="slow")  # waits 0.2 s in the queue
        assert (waited.value.status, waited.value.kind) == (503, "busy")
        queued = asyncio.create_task(pool.request(b"GET", b"/fast", [], key="slow"))
        await eventually(lambda: pool.status()["keys"]["slow"]["waiting"] == 1)
        with pytest.raises(UpstreamError, match="too many requests waiting"):
            await pool.request(b"GET", b"/fast", [], key="slow")  # the queue is full
        release.set()
        for task in held:
            assert await (await task).read() == b"held"
        assert await (await queued).read() == b"fast"
        assert pool.status()["errors"] == {"busy": 2}
        assert pool.status()["keys"] == {}
        await pool.close()
