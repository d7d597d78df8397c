"""RequestTracer: spans around each request, drops when the exporter is behind, sampling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from guardproxy.telemetry import NO_TRACER, Telemetry, TelemetryConfig
from guardproxy.telemetry.tracing import CURRENT
from guardproxy.transport import HeaderList, Request, ResponseWriter

from .exchanges import request as new_request


def per_request_seconds(telemetry: Telemetry | None, n: int = 10_000) -> float:
    """Mean wall time of the instrumentation around one request (handler does nothing)."""
    tracer: Any = telemetry.tracer if telemetry else NO_TRACER

    async def handler(req: Request, writer: ResponseWriter) -> None:
        tracer.upstream_call(req, []).end(200)
        writer.send(200, [])

    wrapped = telemetry.traced(handler) if telemetry else handler
    began = time.perf_counter()
    for _ in range(n):
        coroutine = wrapped(*new_request()[:2])
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
    sent: list[HeaderList] = []

    async def handler(req: Request, writer: ResponseWriter) -> None:
        sent.append([])
        call = telemetry.tracer.upstream_call(req, sent[-1])
        assert getattr(call, "span", "?") is None  # no CLIENT span under an unsampled parent
        call.end(200)
        writer.send(200, [])

    for _ in range(50):
        asyncio.run(telemetry.traced(handler)(*new_request()[:2]))
    assert telemetry.spans is not None and telemetry.spans.queued == 0
    values = [dict(headers)[b"traceparent"].decode() for headers in sent]
    flags = [int(value.rsplit("-", 1)[1], 16) for value in values]
    assert flags and not any(f & 1 for f in flags)  # the unsampled decision goes upstream
    assert len(set(values)) == 50
    asyncio.run(telemetry.shutdown(1.0))


def test_the_clients_traceparent_is_replaced_upstream_not_repeated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    telemetry = Telemetry(
        TelemetryConfig(traces_endpoint="http://127.0.0.1:1/v1/traces"), "http://u:1"
    )
    incoming = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    sent: HeaderList = [(b"traceparent", incoming), (b"x-other", b"1")]

    async def handler(req: Request, writer: ResponseWriter) -> None:
        telemetry.tracer.upstream_call(req, sent).end(200)
        writer.send(200, [])

    req, writer, _ = new_request(headers=[(b"traceparent", incoming)])
    asyncio.run(telemetry.traced(handler)(req, writer))
    values = [v for k, v in sent if k == b"traceparent"]
    assert len(values) == 1 and values[0] != incoming
    assert values[0].split(b"-")[1] == incoming.split(b"-")[1]  # the same trace, continued
    assert (b"x-other", b"1") in sent
    asyncio.run(telemetry.shutdown(0.2))


def long_request_spans(telemetry: Telemetry) -> list[Any]:
    """The SERVER and CLIENT spans of one request with a 60,000-character path and Host."""
    spans: list[Any] = []

    async def handler(req: Request, writer: ResponseWriter) -> None:
        call: Any = telemetry.tracer.upstream_call(req, [])
        spans.extend([CURRENT.get().span, call.span])  # type: ignore[union-attr]
        call.end(200)
        writer.send(200, [])

    host = (b"host", b"h" * 60_000 + b":80")
    req, writer, _ = new_request(target=b"/" + b"a" * 60_000, headers=[host])
    asyncio.run(telemetry.traced(handler)(req, writer))
    return spans


def test_client_chosen_span_attributes_are_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    config = TelemetryConfig.from_env(otlp_endpoint="http://127.0.0.1:1")
    telemetry = Telemetry(config, "http://u:1")
    server, client = long_request_spans(telemetry)
    values = [v for span in (server, client) for v in span.attributes.values()]
    lengths = [len(v) for v in values if isinstance(v, str)]
    assert max(lengths) == 1024  # the export queue holds thousands of spans: ~1 KiB a value
    assert server.attributes["url.path"] == "/" + "a" * 1023
    asyncio.run(telemetry.shutdown(0.2))


def test_the_attribute_length_follows_the_otel_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4096")
    config = TelemetryConfig.from_env(otlp_endpoint="http://127.0.0.1:1")
    telemetry = Telemetry(config, "http://u:1")
    server, _ = long_request_spans(telemetry)
    assert len(server.attributes["url.path"]) == 4096
    asyncio.run(telemetry.shutdown(0.2))
