"""Exporters behind the proxy: a stuck collector cannot hold up shutdown."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from guardproxy.telemetry import Telemetry, TelemetryConfig
from guardproxy.testing import eventually


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A collector that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1/traces"


def test_shutdown_returns_within_its_timeout_while_an_export_hangs(black_hole: str) -> None:
    config = TelemetryConfig(traces_endpoint=black_hole, timeout=60.0)
    telemetry = Telemetry(config, "http://u:1")
    assert telemetry.tracer_provider is not None and telemetry.spans is not None
    tracer = telemetry.tracer_provider.get_tracer("test")
    for _ in range(3):
        tracer.start_span("s").end()
    exporter = telemetry.spans.exporter

    async def stuck() -> None:
        await eventually(lambda: exporter.taken > 0)  # the batcher is now inside export()
        began = time.perf_counter()
        await telemetry.shutdown(0.5)
        assert time.perf_counter() - began < 10  # not the exporter's 60 s

    asyncio.run(stuck())
    assert exporter.exported == 0


def test_spans_and_metrics_share_the_shutdown_timeout(black_hole: str) -> None:
    metrics = black_hole.replace("/v1/traces", "/v1/metrics")
    config = TelemetryConfig(traces_endpoint=black_hole, metrics_endpoint=metrics, timeout=60.0)
    telemetry = Telemetry(config, "http://u:1")
    assert telemetry.tracer_provider is not None and telemetry.spans is not None
    telemetry.tracer_provider.get_tracer("test").start_span("s").end()
    telemetry.policy_reload("applied")  # a point for the last metric export to carry
    exporter = telemetry.spans.exporter

    async def stuck() -> float:
        await eventually(lambda: exporter.taken > 0)
        began = time.perf_counter()
        await telemetry.shutdown(1.0)  # both exports hang: each waits the whole second
        return time.perf_counter() - began

    # One after the other they took twice the timeout: 10 s of a pod's grace period at 5 s.
    took = asyncio.run(stuck())
    assert took < 1.9
