"""What the proxy answers by itself: JSON naming the request, in fixed words."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from guardproxy.testing import RunningProxy, proxy_settings, running_proxy


async def raw_answer(proxy: RunningProxy, request: bytes) -> tuple[int, dict[str, object]]:
    """Send raw bytes to the data port; the status and JSON body of the answer."""
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def test_the_server_s_own_errors_are_json_naming_the_request(upstream_url: str) -> None:
    big = b"x" * (70 * 1024)
    head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Request-Id: big-1\r\nX-Pad: " + big + b"\r\n\r\n"
    feedback = (
        b"POST /guardproxy/v1/feedback HTTP/1.1\r\nHost: x\r\nX-Request-Id: slow-1\r\n"
        b"Authorization: Bearer feedback-secret\r\nContent-Length: 100\r\n\r\n[{"
    )
    async with running_proxy(proxy_settings(upstream_url, body_timeout=0.3)) as proxy:
        status, doc = await raw_answer(proxy, head)
        assert status == 431 and len(str(doc["request_id"])) == 32  # no head read: a new id
        status, doc = await raw_answer(proxy, feedback)  # silent mid-body: the server's 408
    assert status == 408 and doc == {
        "error": "request body not received in time",
        "request_id": "slow-1",
    }


async def test_a_failure_inside_the_proxy_is_a_500_without_its_detail(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("detail-never-shown")

    proxy.runtime.proxy.guarded_model = broken  # type: ignore[assignment,method-assign]
    async with client.get(f"{proxy.url}/echo", headers={"X-Request-Id": "r-500"}) as response:
        doc = await response.json()
    assert response.status == 500
    assert doc == {"error": "internal error in the proxy", "request_id": "r-500"}
    assert proxy.runtime.proxy.counts.internal_errors == 1
