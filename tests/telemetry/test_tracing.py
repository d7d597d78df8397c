"""RequestTracer: spans around each request, drops when the exporter is behind, sampling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from guardproxy.telemetry import NO_TRACER, Telemetry, TelemetryConfig


def per_request_seconds(telemetry: Telemetry | None, n: int = 10_000) -> float:
    """Mean wall time of the instrumentation around one request (handler does nothing)."""
    request = make_mocked_request("POST", "/v2/models/m/infer", headers={"Host": "p:8080"})
    response = web.Response()
    tracer: Any = telemetry.tracer if telemetry else NO_TRACER

    async def handler(req: web.Request) -> web.StreamResponse:
        tracer.upstream_call(req, CIMultiDict()).end(200)
        return response

    wrapped = telemetry.traced(handler) if telemetry else handler
    began = time.perf_counter()
    for _ in range(n):
        coroutine = wrapped(request)
        with contextlib.suppress(StopIteration):
            coroutine.send(None)  # type: ignore[attr-defined]
    return (time.perf_counter() - began) / n


def traced_seconds(monkeypatch: pytest.MonkeyPatch, ratio: str) -> tuple[float, Telemetry]:
    """Many traced requests with spans sampled by parentbased_traceidratio at this ratio."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    tracing = Telemetry(
        TelemetryConfig(traces_endpoint="http://127.0.0.1:1/v1/traces"), "http://u:1"
    )
    cost = min(per_request_seconds(tracing, 5_000) for _ in range(2))
    return cost, tracing


def test_spans_beyond_the_export_queue_are_dropped_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, busy = traced_seconds(monkeypatch, "1.0")  # the exporter (nothing listens) is behind
    assert busy.status()["spans"]["dropped"] > 0
    asyncio.run(busy.shutdown(0.2))


def test_an_unsampled_request_reaches_no_span_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    config = TelemetryConfig(traces_endpoint="http://127.0.0.1:1/v1/traces")
    telemetry = Telemetry(config, "http://u:1")
    assert telemetry.requests.sampler_reads_attributes is False  # the SDK's samplers do not
    sent: list[CIMultiDict[str]] = []
    request = make_mocked_request("POST", "/v2/models/m/infer", headers={"Host": "p:8080"})

    async def handler(req: web.Request) -> web.StreamResponse:
        sent.append(CIMultiDict())
        call = telemetry.tracer.upstream_call(req, sent[-1])
        assert getattr(call, "span", "?") is None  # no CLIENT span under an unsampled parent
        call.end(200)
        return web.Response()

    for _ in range(50):
        asyncio.run(telemetry.traced(handler)(request))  # type: ignore[arg-type]
    assert telemetry.spans is not None and telemetry.spans.queued == 0
    flags = [int(headers["traceparent"].rsplit("-", 1)[1], 16) for headers in sent]
    assert flags and not any(f & 1 for f in flags)  # the unsampled decision goes upstream
    assert len({headers["traceparent"] for headers in sent}) == 50
    asyncio.run(telemetry.shutdown(1.0))
