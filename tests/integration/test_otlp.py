"""Traces and metrics through a real proxy into a real OTLP/HTTP receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from itertools import islice

import aiohttp
import pytest

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import build_model_app
from guardproxy.telemetry.instruments import OVERHEAD_BUCKETS
from guardproxy.testing import (
    OtlpReceiver,
    attributes_of,
    eventually,
    proxy_settings,
    running_proxy,
    serving,
)
from tests.integration.traffic import (
    CLIENT,
    HISTOGRAMS,
    SERVER,
    by_kind,
    otlp_decisions,
    prometheus_counts,
    prometheus_decisions,
    send_batches,
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


async def test_an_incoming_trace_is_continued_and_sent_upstream(
    receiver: OtlpReceiver, upstream_url: str, client: aiohttp.ClientSession
) -> None:
    settings = proxy_settings(upstream_url, otlp_endpoint=receiver.url)
    async with running_proxy(settings) as proxy:
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        async with client.get(f"{proxy.url}/echo/a?x=1", headers=headers) as response:
            echoed = dict((await response.json())["headers"])
        async with client.get(f"{proxy.url}/status/503") as response:
            assert response.status == 503
        assert await asyncio.to_thread(proxy.runtime.telemetry.flush)
    servers, clients = by_kind(receiver.spans(), SERVER), by_kind(receiver.spans(), CLIENT)
    assert len(servers) == len(clients) == 2
    server, call = servers[0], clients[0]
    assert server.trace_id.hex() == TRACE_ID and server.parent_span_id.hex() == PARENT_ID
    assert server.name == "GET" and call.name == "GET"
    assert call.trace_id == server.trace_id and call.parent_span_id == server.span_id
    _, trace_id, parent, flags = echoed["traceparent"].split("-")
    assert (trace_id, parent, flags) == (TRACE_ID, call.span_id.hex(), "01")
    attributes = attributes_of(server.attributes)
    assert attributes["http.request.method"] == "GET"
    assert attributes["url.path"] == "/echo/a" and attributes["url.scheme"] == "http"
    assert attributes["http.response.status_code"] == 200
    assert attributes["server.address"] == "127.0.0.1" and attributes["server.port"] > 0
    assert attributes_of(call.attributes)["server.port"] == int(upstream_url.rsplit(":", 1)[1])
    failed = attributes_of(servers[1].attributes)
    assert failed["error.type"] == "503" and servers[1].status.code == 2  # STATUS_CODE_ERROR
    resource = receiver.resources()[0]
    assert resource["service.name"] == "guardproxy"
    assert resource["guardproxy.region"] == "default"


async def test_guard_attributes_and_metric_values_match_the_traffic(
    receiver: OtlpReceiver, client: aiohttp.ClientSession
) -> None:
    rows = list(islice(adult_rows(), 12))
    async with serving(build_model_app()) as model_url:
        settings = proxy_settings(model_url, otlp_endpoint=receiver.url)
        async with running_proxy(settings) as proxy:
            expected = await send_batches(client, proxy.url, rows, size=3)
            assert await asyncio.to_thread(proxy.runtime.telemetry.flush)
            async with client.get(f"{proxy.admin_url}/metrics") as response:
                text = await response.text()
    server = by_kind(receiver.spans(), SERVER)[0]
    assert server.name == "POST /v2/models/adult/infer"
    attributes = attributes_of(server.attributes)
    assert attributes["http.route"] == "/v2/models/adult/infer"
    assert attributes["guardproxy.group"] == rows[0]["sex"].strip()
    assert attributes["guardproxy.rows"] == 3 and attributes["guardproxy.threshold"] == 0.5
    assert attributes["guardproxy.decision"] == int(attributes["guardproxy.score"] >= 0.5)
    assert len(attributes["guardproxy.policy.version"]) == 12
    assert otlp_decisions(receiver) == expected
    assert prometheus_decisions(text) == expected
    for name in HISTOGRAMS:  # the same counts through OTLP and on /metrics, one per request
        (metric,) = receiver.metrics(name)
        assert sum(point.count for point in metric.histogram.data_points) == 4, name
        assert prometheus_counts(text, name) == 4, name
    (point, *_) = receiver.metrics("guardproxy.overhead")[0].histogram.data_points
    assert list(point.explicit_bounds) == list(OVERHEAD_BUCKETS)
    assert sum(point.bucket_counts) == point.count and point.min <= point.max
    assert point.start_time_unix_nano < point.time_unix_nano


@pytest.fixture
async def black_hole() -> AsyncIterator[str]:
    """An endpoint that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_silent_collector_neither_slows_requests_nor_goes_uncounted(
    black_hole: str,
    upstream_url: str,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
    plain = running_proxy(proxy_settings(upstream_url))
    silent = running_proxy(proxy_settings(upstream_url, otlp_endpoint=black_hole))
    async with plain as without, silent as with_hole:
        await timed(client, without.url, 20), await timed(client, with_hole.url, 20)  # warm up
        times: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(300):  # interleaved, so both see the same machine noise
            times["without"] += await timed(client, without.url, 1)
            times["with"] += await timed(client, with_hole.url, 1)
        telemetry = with_hole.runtime.telemetry

        def both_failed() -> bool:
            counts = telemetry.status()
            spans, points = counts["spans"], counts["metric_points"]
            return bool(spans["export_failed"] and points["export_failed"])

        await eventually(both_failed, every=0.1)
        counts = telemetry.status()
    print(
        f"\nserial GET p99: without exporter {p99(times['without']) * 1e3:.2f} ms, "
        f"with a black-hole collector {p99(times['with']) * 1e3:.2f} ms"
    )
    # An exporter that blocked the loop would hold requests for its 300 s timeout; 50 ms of
    # slack keeps a busy machine's scheduling noise from passing for one.
    assert p99(times["with"]) <= 2 * p99(times["without"]) + 0.05, (
        p99(times["with"]),
        p99(times["without"]),
    )
    assert counts["spans"]["dropped"] > 0
    assert counts["spans"]["export_failed"] > 0 and counts["spans"]["exported"] == 0
    assert counts["metric_points"]["export_failed"] > 0


async def timed(client: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    """Latencies of n serial GETs through a proxy."""
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(n):
        began = loop.time()
        async with client.get(f"{url}/echo/x") as response:
            await response.read()
            assert response.status == 200
        out.append(loop.time() - began)
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))]
