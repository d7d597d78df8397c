"""--max-buffered: guarded request bodies share one budget, held until their exchange ends.

Clients that trickle large bodies once held a full --max-body buffer each, before any slot
was taken: 60 of them took a real proxy up ~940 MiB. Now a body's bytes are held in the
budget as they arrive (never reserved ahead from a declared length, which would let heads
alone hold it), a decoded body at its decoded size, each past its first 64 KiB (which the
transport buffers for any connection anyway, so a small request never waits on it); a
request whose bytes do not fit gets a 503 with Retry-After, and whatever way an exchange
ends, its bytes go back.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from guardproxy.guards.base import GuardChain
from guardproxy.guards.exchange import Exchange
from guardproxy.hotpath.bodies import UNCOUNTED
from guardproxy.testing import (
    RecordingModel,
    RunningProxy,
    eventually,
    proxy_settings,
    running_proxy,
)
from tests.integration.attacks import INFER, applicant, guarded, post
from tests.transport.support import Answer, RawClient, port_of

MAX_BODY = 256 * 1024
HELD = MAX_BODY - 8 * 1024  # what each trickling client sends
CHARGED = HELD - UNCOUNTED  # what the budget counts of it
BUDGET = 2 * CHARGED + 16 * 1024  # two trickling clients leave 16 KiB of it


def reserved(proxy: RunningProxy) -> int:
    """Request body bytes the proxy holds right now."""
    return proxy.runtime.proxy.bodies.reserved


def head(length: int | None, extra: bytes = b"") -> bytes:
    """A guarded POST head: a declared length, or chunked when None."""
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + extra + framing + b"\r\n\r\n"
    )  # fmt: skip


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def padded(size: int) -> bytes:
    """A valid guarded request of `size` bytes (the padding rides in a BYTES input)."""
    body = json.dumps(applicant(note="x")).encode()
    return json.dumps(applicant(note="x" * (size - len(body) + 1))).encode()


@asynccontextmanager
async def trickling(proxy: RunningProxy) -> AsyncIterator[list[RawClient]]:
    """Two clients holding most of a two-body budget: one declares its length, one chunks."""
    declared = await RawClient.open(port_of(proxy.url))
    await declared.send(head(HELD + 1) + b"x" * HELD)  # all but its last byte
    chunked = await RawClient.open(port_of(proxy.url))
    await chunked.send(head(None))
    for _ in range(HELD // 8192):
        await chunked.send(chunk(b"x" * 8192))  # no last chunk: the body stays open
    try:
        yield [declared, chunked]
    finally:
        declared.close()
        chunked.close()


def assert_budget_refusal(answer: Answer) -> None:
    """A 503 in the proxy's own JSON error style, with Retry-After."""
    assert answer.status == 503
    assert answer.header(b"retry-after") == b"1"
    doc = json.loads(answer.body)
    assert doc["error"] == "too many bodies held by the proxy; retry later"
    assert doc["request_id"] and answer.header(b"x-request-id") == doc["request_id"].encode()


async def test_trickling_clients_hold_the_budget_and_a_large_body_gets_503(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with guarded(tmp_path, max_body=MAX_BODY, max_buffered=BUDGET) as (proxy, model):
        async with trickling(proxy):
            await eventually(lambda: reserved(proxy) == 2 * CHARGED)

            # A declared length does not hold the budget, its bytes do: refused once they come.
            large = await RawClient.open(port_of(proxy.url))
            await large.send(head(MAX_BODY) + b"x" * (UNCOUNTED + 1))
            await eventually(lambda: reserved(proxy) == 2 * CHARGED + 1)
            await large.send(b"x" * 20_000)
            assert_budget_refusal(await large.answer())
            # A chunked body: refused once it grows past what is left.
            grown = await RawClient.open(port_of(proxy.url))
            await grown.send(head(None) + chunk(b"x" * 50_000) + chunk(b"x" * 40_000))
            assert_budget_refusal(await grown.answer())
            # A small gzip body whose decoded size does not fit.
            bomb = gzip.compress(padded(UNCOUNTED + 20_000))
            assert len(bomb) < 4096
            packed = await RawClient.open(port_of(proxy.url))
            await packed.send(head(len(bomb), b"Content-Encoding: gzip\r\n") + bomb)
            assert_budget_refusal(await packed.answer())
            for each in (large, grown, packed):
                each.close()

            # A small body needs none of the budget: answered as ever.
            code, headers, doc = await post(client, proxy.url + INFER, applicant())
            assert code == 200 and headers["X-Guard-Decision"] == "1", doc
            assert len(model.bodies) == 1

            status = proxy.runtime.status()
            assert status["requests"]["refused"] == {"503": 3}
            assert status["request_bodies"] == {
                "budget": BUDGET,
                "reserved": 2 * CHARGED,
                "peak": status["request_bodies"]["peak"],
                "refused": 3,
            }
            assert status["request_bodies"]["peak"] >= 2 * CHARGED

        # The trickling clients leave: their bytes go back, and a large body fits again.
        await eventually(lambda: reserved(proxy) == 0)
        code, _, doc = await post(client, proxy.url + INFER, padded(MAX_BODY // 2))
        assert code == 200, doc
        await eventually(lambda: reserved(proxy) == 0)
        assert proxy.runtime.proxy.counts.client_gone == 2


async def test_the_budget_is_released_however_the_exchange_ends(
    tmp_path: Path, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The budget is one body (--max-buffered below --max-body is raised to it): a byte left
    # behind by any exchange would refuse the next full one.
    async with guarded(tmp_path, max_body=MAX_BODY, max_buffered=1000, body_timeout=0.5) as (
        proxy,
        _,
    ):
        assert proxy.runtime.status()["request_bodies"]["budget"] == MAX_BODY
        full = padded(MAX_BODY)

        async def answered(body: bytes, headers: dict[str, str] | None = None) -> int:
            code, _, _ = await post(client, proxy.url + INFER, body, headers)
            await eventually(lambda: reserved(proxy) == 0)
            return code

        assert await answered(full) == 200
        assert await answered(full + b" ") == 413  # declared over --max-body: never reserved
        assert await answered(b"not gzip", {"Content-Encoding": "gzip"}) == 400
        assert await answered(gzip.compress(full), {"Content-Encoding": "gzip"}) == 200

        over = await RawClient.open(port_of(proxy.url))  # chunked past --max-body: 413
        await over.send(head(None) + chunk(b"x" * 200_000) + chunk(b"x" * 100_000))
        assert (await over.answer()).status == 413
        await eventually(lambda: reserved(proxy) == 0)

        gone = await RawClient.open(port_of(proxy.url))  # the client leaves mid-body
        await gone.send(head(None) + chunk(b"x" * (UNCOUNTED + 50_000)))
        await eventually(lambda: reserved(proxy) == 50_000)
        gone.close()
        await eventually(lambda: reserved(proxy) == 0)

        silent = await RawClient.open(port_of(proxy.url))  # too slow: 408
        await silent.send(head(MAX_BODY) + b"x" * 100)
        assert (await silent.answer()).status == 408
        await eventually(lambda: reserved(proxy) == 0)

        async def broken(chain: GuardChain, ex: Exchange) -> None:
            raise RuntimeError("a guard failed")

        monkeypatch.setattr(GuardChain, "on_request", broken)  # inside the proxy: 500
        assert await answered(full) == 500
        monkeypatch.undo()

        assert await answered(full) == 200  # the whole budget is there still
        refused = proxy.runtime.status()["requests"]["refused"]
        assert refused == {"413": 2, "400": 1, "408": 1}
        peak = proxy.runtime.proxy.bodies.peak  # the largest body, and the model's answer
        assert MAX_BODY - UNCOUNTED < peak < MAX_BODY - UNCOUNTED + 1000


async def test_an_upstream_error_releases_the_budget(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    settings = proxy_settings("http://127.0.0.1:1", samples_dir=tmp_path, max_body=MAX_BODY)
    async with running_proxy(settings) as proxy:
        for _ in range(3):
            code, _, doc = await post(client, proxy.url + INFER, padded(MAX_BODY))
            assert code == 502, doc
            assert reserved(proxy) == 0
        assert proxy.runtime.proxy.bodies.refused == 0


async def test_each_worker_keeps_to_its_share(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"max_body": 1000, "max_buffered": 10_000, "workers": 4}
    async with guarded(tmp_path, **settings) as (proxy, _):
        assert proxy.runtime.status()["request_bodies"]["budget"] == 2500


class LargeAnswers(RecordingModel):
    """A model whose answers carry `pad` bytes besides the score."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(INFER, self._large)
        return app

    async def _large(self, request: web.Request) -> web.Response:
        await request.read()
        outputs = [{"name": "score", "shape": [1], "datatype": "FP32", "data": [0.7]}]
        return web.json_response({"model_name": "m", "outputs": outputs, "pad": "x" * self.pad})


async def test_answers_are_held_in_the_budget_until_the_client_has_read_them(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    # 8 MiB answers: more than the kernel (a 4 MiB send buffer at most, and a small receive
    # buffer) and the client's reader take in before the client reads.
    model = LargeAnswers(8 << 20)
    async with guarded(tmp_path, model=model, max_body=9 << 20, max_buffered=12 << 20) as (
        proxy,
        _,
    ):
        request = json.dumps(applicant()).encode()
        slow = await RawClient.open(port_of(proxy.url), receive_buffer=4096)
        await slow.send(head(len(request)) + request)  # and reads nothing, for now
        await eventually(lambda: reserved(proxy) > (8 << 20) - UNCOUNTED)
        code, headers, doc = await post(client, proxy.url + INFER, applicant())
        assert code == 503 and headers["Retry-After"] == "1"  # its answer does not fit
        assert doc["error"] == "too many bodies held by the proxy; retry later"
        answer = await slow.answer(within=30)
        assert answer.status == 200 and len(answer.body) > 8 << 20
        await eventually(lambda: reserved(proxy) == 0)
        code, _, doc = await post(client, proxy.url + INFER, applicant())
        assert code == 200 and len(doc["pad"]) == 8 << 20
