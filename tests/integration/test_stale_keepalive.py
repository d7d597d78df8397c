"""An upstream that closes after each error answer without saying so, as uvicorn does.

MLServer (on uvicorn) answers a bad request and closes the connection without
`Connection: close`; a pool that reused that connection failed the next, good request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from guardproxy.testing import proxy_settings, running_proxy
from tests.transport.support import raw_upstream, read_request

INFER = "/v2/models/adult/infer"
GOOD = {"inputs": [{"name": "sex", "shape": [1], "datatype": "BYTES", "data": ["Female"]}]}
ANSWER = json.dumps(
    {"model_name": "adult", "outputs": [{"name": "score", "shape": [1], "data": [0.7]}]}
).encode()


def response(status: bytes, body: bytes) -> bytes:
    """An answer with a length and no Connection header."""
    head = b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % (status, len(body)) + body


async def uvicorn_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Good requests on a kept-alive connection; a bad one answered 400, then closed."""
    while True:
        _, body = await read_request(reader)
        if b"bad" in body:
            writer.write(response(b"400 Bad Request", b'{"error": "bad request"}'))
            await writer.drain()
            await asyncio.sleep(0.005)  # the close follows a little later, as under load
            return  # the connection closes, with nothing said about it
        writer.write(response(b"200 OK", ANSWER))
        await writer.drain()


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """The uvicorn-like upstream's URL."""
    async with raw_upstream(uvicorn_like) as port:
        yield f"http://127.0.0.1:{port}"


async def test_every_good_request_after_a_closed_error_answer_is_200(upstream: str) -> None:
    statuses: dict[str, list[int]] = {"good": [], "bad": []}
    async with running_proxy(proxy_settings(upstream)) as proxy:

        async def alternate(session: aiohttp.ClientSession, pairs: int) -> None:
            for _ in range(pairs):
                async with session.post(proxy.url + INFER, json={"bad": 1}) as r:
                    await r.read()
                    statuses["bad"].append(r.status)
                async with session.post(proxy.url + INFER, json=GOOD) as r:
                    await r.read()
                    statuses["good"].append(r.status)
                    assert r.headers["X-Guard-Decision"] == "1"

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(alternate(session, 125) for _ in range(4)))
            pool = proxy.runtime.upstream.status()
    assert statuses["good"] == [200] * 500
    assert statuses["bad"] == [400] * 500
    assert pool["errors"] == {}
    assert pool["connects"] >= 500  # each error answer cost its connection
    assert pool["retried"] > 0  # requests sent on a connection the upstream was closing
