"""The data path: faithful forwarding of methods, headers, bodies and errors."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import time

import aiohttp
import pytest
import yarl
from aiohttp import web

from guardproxy.hotpath.upstream import Timeouts
from guardproxy.testing import PATTERN, RunningProxy, proxy_settings, running_proxy, serving
from guardproxy.transport import Request, ResponseWriter
from tests.transport.support import RawClient
from tests.transport.support import serving as serving_transport


def header_values(echo: dict[str, object], name: str) -> list[str]:
    """Values of a header as the upstream saw it."""
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
async def test_every_method_path_and_query_reach_the_upstream(
    proxy: RunningProxy, client: aiohttp.ClientSession, method: str
) -> None:
    body = b"" if method in ("GET", "DELETE", "OPTIONS") else b'{"x": 1}'
    url = f"{proxy.url}/echo/a%2Fb/c?q=1&q=2&sp=%20x"
    async with client.request(method, url, data=body or None) as response:
        echo = await response.json()
    assert response.status == 200
    assert echo["method"] == method
    assert echo["path_qs"] == "/echo/a%2Fb/c?q=1&q=2&sp=%20x"
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_hop_by_hop_headers_dropped_and_forwarding_headers_added(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    headers = {
        "Connection": "keep-alive, X-Secret-Hop",
        "X-Secret-Hop": "drop me",
        "Keep-Alive": "timeout=5",
        "Proxy-Connection": "keep-alive",
        "TE": "trailers",
        "Trailer": "X-T",
        "Upgrade": "h2c",
        "X-Custom": "kept",
        "X-Forwarded-For": "10.1.1.1",
        "Host": "model.example:8080",
    }
    async with client.get(f"{proxy.url}/echo", headers=headers) as response:
        echo = await response.json()
    names = {k.lower() for k, _ in echo["headers"]}
    for hop in ("x-secret-hop", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"):
        assert hop not in names
    assert header_values(echo, "X-Custom") == ["kept"]
    assert header_values(echo, "X-Forwarded-For") == ["127.0.0.1"]  # the client's claim replaced
    assert header_values(echo, "X-Forwarded-Host") == ["model.example:8080"]
    assert header_values(echo, "X-Forwarded-Proto") == ["http"]
    upstream_host = proxy.runtime.upstream.authority
    assert header_values(echo, "Host") == [upstream_host]
    # the client library adds nothing of its own
    assert "user-agent" not in names or header_values(echo, "User-Agent") != ["Python"]
    assert response.headers["X-Upstream"] == "echo"
    assert response.headers["Set-Cookie"] == "a=1"


async def test_request_id_echoed_or_generated_and_sent_upstream(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{proxy.url}/echo", headers={"X-Request-Id": "req-42"}) as response:
        echo = await response.json()
    assert response.headers["X-Request-Id"] == "req-42"
    assert header_values(echo, "X-Request-Id") == ["req-42"]
    async with client.get(f"{proxy.url}/echo") as response:
        echo = await response.json()
    generated = response.headers["X-Request-Id"]
    assert len(generated) == 32
    assert header_values(echo, "X-Request-Id") == [generated]


async def test_binary_body_byte_for_byte_both_ways(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    payload = PATTERN * 3
    async with client.post(f"{proxy.url}/upload", data=payload) as response:
        assert await response.json() == {
            "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
    async with client.get(f"{proxy.url}/bytes/300000") as response:
        data = await response.read()
    assert data == (PATTERN * 5)[:300000]


async def test_gzip_encoded_answer_passes_still_encoded(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{proxy.url}/gzip") as response:
        raw = await response.read()
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(raw) == b"hello " * 100


async def test_server_sent_events_arrive_as_written(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    arrivals = []
    start = time.perf_counter()
    async with client.get(f"{proxy.url}/sse?n=5&interval=0.2") as response:
        async for line in response.content:
            if line.startswith(b"data:"):
                arrivals.append(time.perf_counter() - start)
    assert len(arrivals) == 6
    # token by token: the first event long before the last, gaps close to the interval
    assert arrivals[0] < 0.15
    assert arrivals[-1] - arrivals[0] > 0.7


@pytest.mark.parametrize("code", [204, 304])
async def test_no_body_statuses(
    proxy: RunningProxy, client: aiohttp.ClientSession, code: int
) -> None:
    async with client.get(f"{proxy.url}/status/{code}") as response:
        assert response.status == code
        assert await response.read() == b""
        assert response.headers["ETag"] == '"v1"'


async def test_head_has_headers_but_no_body(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    async with client.head(f"{proxy.url}/echo") as response:
        assert response.status == 200
        assert await response.read() == b""
        assert response.headers["X-Upstream"] == "echo"


async def test_upstream_statuses_pass_through(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{proxy.url}/status/503") as response:
        assert response.status == 503
        assert await response.json() == {"status": 503}


async def test_refused_upstream_is_502_json(client: aiohttp.ClientSession) -> None:
    async with running_proxy(proxy_settings("http://127.0.0.1:9")) as proxy:
        async with client.get(f"{proxy.url}/echo", headers={"X-Request-Id": "r1"}) as response:
            body = await response.json()
    assert response.status == 502
    assert body["request_id"] == "r1"
    assert "unreachable" in body["error"]


async def test_upstream_timeout_is_504_json(
    upstream_url: str, client: aiohttp.ClientSession
) -> None:
    settings = proxy_settings(upstream_url, timeouts=Timeouts(connect=1, read=0.3, total=5))
    async with running_proxy(settings) as proxy, client.get(f"{proxy.url}/slow/2") as response:
        body = await response.json()
    assert response.status == 504
    assert body["error"] == "upstream timed out"
    assert len(body["request_id"]) == 32


async def test_reset_mid_response_closes_the_client_connection(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(f"{proxy.url}/reset") as response:
            assert response.status == 200
            await response.read()
    assert proxy.runtime.proxy.counts.aborted == 1


async def test_reserved_prefix_is_not_proxied(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    headers = {"X-Request-Id": "r-404"}
    async with client.get(f"{proxy.url}/guardproxy/v1/nothing", headers=headers) as response:
        assert response.status == 404
        assert await response.json() == {
            "error": "no such endpoint under /guardproxy/",
            "request_id": "r-404",
        }


async def test_concurrent_requests_share_one_pool(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    async def one(i: int) -> int:
        async with client.post(f"{proxy.url}/echo", data=str(i).encode()) as response:
            echo = await response.json()
            assert echo["body_sha256"] == hashlib.sha256(str(i).encode()).hexdigest()
            return response.status

    assert set(await asyncio.gather(*(one(i) for i in range(200)))) == {200}
    assert proxy.runtime.proxy.counts.requests == 200
    assert proxy.runtime.proxy.counts.in_flight == 0


async def test_upstream_with_path_prefix(client: aiohttp.ClientSession) -> None:
    from guardproxy.testing import upstream_app

    async with serving(upstream_app()) as url:
        async with running_proxy(proxy_settings(url + "/")) as proxy:
            async with client.get(f"{proxy.url}/echo/x?y=1") as response:
                assert (await response.json())["path_qs"] == "/echo/x?y=1"


async def test_an_escaped_guarded_path_is_still_guarded(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    target = yarl.URL(f"{proxy.url}/v2/models/%61dult/infer", encoded=True)
    async with client.post(target, json={"inputs": []}) as response:
        await response.read()
    counts = proxy.runtime.proxy.counts
    assert (counts.guarded, counts.unguarded) == (1, 0)  # matched as /v2/models/adult/infer


async def test_an_absolute_form_target_reaches_the_upstream_in_origin_form(
    proxy: RunningProxy,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]))
    writer.write(b"GET http://elsewhere.example/echo/abs?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    echo = json.loads(await reader.readexactly(length))
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert echo["path_qs"] == "/echo/abs?q=1"


async def test_options_asterisk_reaches_the_upstream_as_asterisk() -> None:
    seen: list[bytes] = []

    async def upstream(request: Request, response: ResponseWriter) -> None:
        seen.append(request.method + b" " + request.target)
        response.send(200, [(b"Allow", b"GET, POST, OPTIONS")])

    async with serving_transport(upstream) as model:
        # A path in --upstream prefixes paths, never `*`: it asks about the server.
        settings = proxy_settings(f"http://127.0.0.1:{model.port}/base")
        async with running_proxy(settings) as proxy:
            port = int(proxy.url.rsplit(":", 1)[1])
            sent = [
                b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
                # RFC 9112 3.2.4: absolute form without path or query, from the last proxy: `*`
                b"OPTIONS http://elsewhere.example:80 HTTP/1.1\r\nHost: x\r\n\r\n",
                b"OPTIONS http://elsewhere.example/ HTTP/1.1\r\nHost: x\r\n\r\n",
                b"OPTIONS /v2 HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET http://elsewhere.example HTTP/1.1\r\nHost: x\r\n\r\n",
            ]
            for data in sent:
                client = await RawClient.open(port)
                await client.send(data)
                answer = await client.answer()
                assert answer.status == 200
                assert answer.header(b"allow") == b"GET, POST, OPTIONS"
                client.close()
            client = await RawClient.open(port)
            await client.send(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await client.answer()).status == 400
            counts = proxy.runtime.proxy.counts
            assert (counts.guarded, counts.unguarded) == (0, 5)
    assert seen == [
        b"OPTIONS *",
        b"OPTIONS *",
        b"OPTIONS /base/",
        b"OPTIONS /base/v2",
        b"GET /base/",
    ]


async def test_the_reserved_prefix_answers_404_for_other_methods_and_paths(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    async with client.get(f"{proxy.url}/guardproxy/v1/feedback") as response:
        assert response.status == 404
        doc = await response.json()
    assert doc["error"] == "no such endpoint under /guardproxy/"  # fixed text, no path echoed
    assert response.headers["X-Request-Id"] == doc["request_id"]


async def test_a_guarded_answer_over_the_body_limit_is_502(client: aiohttp.ClientSession) -> None:
    async def huge(request: web.Request) -> web.Response:
        scores = [0.5] * 2000
        return web.json_response({"outputs": [{"name": "score", "shape": [2000], "data": scores}]})

    app = web.Application()
    app.router.add_post("/v2/models/adult/infer", huge)
    async with serving(app) as url, running_proxy(proxy_settings(url, max_body=4096)) as proxy:
        async with client.post(f"{proxy.url}/v2/models/adult/infer", json={"inputs": []}) as r:
            doc = await r.json()
    assert r.status == 502 and doc["error"] == "upstream answer larger than 4096 bytes"
    assert proxy.runtime.proxy.counts.upstream_errors == {502: 1}


async def test_every_request_passes_the_observation_point_once(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    seen: list[tuple[str, int]] = []

    def finished(request: Request, writer: ResponseWriter, request_id: str, *_: object) -> None:
        seen.append((request_id, writer.status))

    proxy.runtime.proxy.finished = finished  # type: ignore[method-assign]
    for rid in ("a", "b"):
        async with client.get(f"{proxy.url}/status/418", headers={"X-Request-Id": rid}) as r:
            await r.read()
    async with client.post(f"{proxy.url}/v2/models/adult/infer", data=b"{}") as r:
        await r.read()
    assert seen[:2] == [("a", 418), ("b", 418)]
    assert len(seen) == 3 and seen[2][1] == r.status
