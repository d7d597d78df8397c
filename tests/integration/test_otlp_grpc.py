"""Traces and metrics through a real proxy into a real OTLP/gRPC receiver."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from itertools import islice

import aiohttp
import pytest

from guardproxy import __version__
from guardproxy.cli import main
from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import build_model_app
from guardproxy.telemetry import TelemetryError
from guardproxy.telemetry.exporters import MODULES
from guardproxy.testing import OtlpReceiver, attributes_of, proxy_settings, running_proxy, serving
from tests.integration.traffic import (
    CLIENT,
    HISTOGRAMS,
    SERVER,
    by_kind,
    otlp_decisions,
    send_batches,
)

from .otlp_grpc import GrpcOtlpReceiver, grpc_otlp_receiver

CUMULATIVE = 2  # opentelemetry.proto AggregationTemporality


@pytest.fixture
async def grpc_receiver() -> AsyncIterator[GrpcOtlpReceiver]:
    """A real OTLP/gRPC receiver on a free port."""
    async with grpc_otlp_receiver() as running:
        yield running


def scopes(receiver: OtlpReceiver) -> set[tuple[str, str]]:
    """(name, version) of every instrumentation scope that sent spans or metrics."""
    found = {
        (scope.scope.name, scope.scope.version)
        for message in receiver.trace_requests
        for resource in message.resource_spans
        for scope in resource.scope_spans
    }
    return found | {
        (scope.scope.name, scope.scope.version)
        for message in receiver.metric_requests
        for resource in message.resource_metrics
        for scope in resource.scope_metrics
    }


async def test_traces_and_metrics_arrive_over_grpc(
    grpc_receiver: GrpcOtlpReceiver,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    rows = list(islice(adult_rows(), 6))
    async with serving(build_model_app()) as model_url:
        settings = proxy_settings(model_url, otlp_endpoint=grpc_receiver.url)
        async with running_proxy(settings) as proxy:
            expected = await send_batches(client, proxy.url, rows, size=2)
            async with client.get(f"{proxy.url}/v2/health/ready") as response:
                assert response.status == 200
            assert await asyncio.to_thread(proxy.runtime.telemetry.flush)
            status = proxy.runtime.status()["telemetry"]
    assert status["traces_protocol"] == status["metrics_protocol"] == "grpc"
    assert status["spans"]["exported"] == 8 and status["spans"]["export_failed"] == 0
    spans = grpc_receiver.spans()
    assert len(by_kind(spans, SERVER)) == len(by_kind(spans, CLIENT)) == 4
    guarded = attributes_of(by_kind(spans, SERVER)[0].attributes)
    assert guarded["http.route"] == "/v2/models/adult/infer" and guarded["guardproxy.rows"] == 2
    assert otlp_decisions(grpc_receiver) == expected
    (decisions,) = grpc_receiver.metrics("guardproxy.decisions")
    assert decisions.sum.aggregation_temporality == CUMULATIVE and decisions.sum.is_monotonic
    assert decisions.unit == "{decision}" and decisions.description
    for name in HISTOGRAMS:
        (metric,) = grpc_receiver.metrics(name)
        assert sum(point.count for point in metric.histogram.data_points) == 4, name
    (resource, *_) = grpc_receiver.resources()
    assert resource["service.name"] == "guardproxy"
    assert resource["service.version"] == __version__
    assert scopes(grpc_receiver) == {("guardproxy", __version__)}
    assert {service for service, _ in grpc_receiver.calls} == {"traces", "metrics"}


async def test_each_signal_follows_its_own_protocol(
    grpc_receiver: GrpcOtlpReceiver,
    receiver: OtlpReceiver,
    upstream_url: str,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", grpc_receiver.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", f"{receiver.url}/v1/metrics")
    async with running_proxy(proxy_settings(upstream_url)) as proxy:
        async with client.get(f"{proxy.url}/echo/a") as response:
            assert response.status == 200
        assert await asyncio.to_thread(proxy.runtime.telemetry.flush)
    assert len(grpc_receiver.spans()) == 2 and not grpc_receiver.metric_requests
    assert receiver.metrics("http.server.request.duration") and not receiver.trace_requests


def without_grpc_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the otlp-grpc extra were not installed: importing its exporters fails."""
    for (_, protocol), module in MODULES.items():
        if protocol == "grpc":
            monkeypatch.setitem(sys.modules, module, None)


async def test_grpc_without_its_extra_is_a_clear_startup_error(
    upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_grpc_exporter(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    settings = proxy_settings(upstream_url, otlp_endpoint="http://127.0.0.1:4317")
    with pytest.raises(TelemetryError, match=r"guardproxy\[otlp-grpc\]"):
        async with running_proxy(settings):
            pass


def test_the_command_exits_with_one_line_naming_the_extra(
    upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_grpc_exporter(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    argv = ["serve", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"]
    argv += ["--admin", "127.0.0.1:0", "--otlp-endpoint", "http://127.0.0.1:4317"]
    with pytest.raises(SystemExit, match=r"^guardproxy serve: OTLP over gRPC .*otlp-grpc"):
        main(argv)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(SystemExit, match="expected http/protobuf or grpc"):
        main(argv)
