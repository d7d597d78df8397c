"""Telemetry configuration, instruments and hot-path cost, without a network."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from guardproxy.breaker import Transition
from guardproxy.telemetry import NO_TRACER, Telemetry, TelemetryConfig, TelemetryError
from guardproxy.telemetry.config import build_resource
from guardproxy.telemetry.decisions import GroupLabels
from guardproxy.telemetry.instruments import AttributeCache


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No OTEL_* or pod identity from the machine leaks into these tests."""
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    for name in ("POD_NAME", "POD_NAMESPACE", "HOSTNAME"):
        monkeypatch.delenv(name, raising=False)
    yield


def samples(telemetry: Telemetry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every Prometheus sample, keyed by name and labels (scope labels dropped)."""
    out = {}
    for family in text_string_to_metric_families(telemetry.metrics_text().decode()):
        for s in family.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if not k.startswith("otel_"))
            out[(s.name, labels)] = s.value
    return out


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def test_endpoints_follow_the_otlp_environment_rules() -> None:
    base = TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})
    assert base.traces_endpoint == "http://c:4318/v1/traces"
    assert base.metrics_endpoint == "http://c:4318/v1/metrics"
    specific = TelemetryConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x",
        }
    )
    assert specific.traces_endpoint == "http://t/x"
    flag = TelemetryConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, otlp_endpoint="http://f"
    )
    assert flag.metrics_endpoint == "http://f/v1/metrics"
    off = TelemetryConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_EXPORTER": "none"}
    )
    assert off.traces_endpoint is None and not off.tracing and off.metrics_endpoint
    assert TelemetryConfig.from_env({}).traces_endpoint is None


def test_sampler_off_disabled_and_timeouts() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_TIMEOUT": "250"}
    assert TelemetryConfig.from_env(env).tracing
    assert TelemetryConfig.from_env(env).timeout == 0.25
    assert not TelemetryConfig.from_env({**env, "OTEL_TRACES_SAMPLER": "always_off"}).tracing
    assert TelemetryConfig.from_env({**env, "OTEL_SDK_DISABLED": "TRUE"}).disabled
    with pytest.raises(TelemetryError, match="OTEL_EXPORTER_OTLP_TIMEOUT"):
        TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"})


def test_protocols(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "guardproxy.telemetry"):
        TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert "grpc is not installed" in caplog.text
    with pytest.raises(TelemetryError, match="expected http/protobuf"):
        TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})


def test_resource_defaults_identity_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTNAME", "pod-from-hostname")
    attributes = build_resource(TelemetryConfig(region="sg")).attributes
    assert attributes["service.name"] == "guardproxy"
    assert attributes["guardproxy.region"] == "sg"
    assert attributes["k8s.pod.name"] == "pod-from-hostname"
    monkeypatch.setenv("POD_NAME", "proxy-7f9")
    monkeypatch.setenv("POD_NAMESPACE", "models")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "scorer")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
    attributes = build_resource(TelemetryConfig()).attributes
    assert attributes["k8s.pod.name"] == "proxy-7f9"
    assert attributes["k8s.namespace.name"] == "models"
    assert attributes["service.name"] == "scorer"
    assert attributes["deployment.environment"] == "prod"
    named = build_resource(TelemetryConfig(service_name="from-flag")).attributes
    assert named["service.name"] == "from-flag"


def test_counters_and_gauges_reach_prometheus_text() -> None:
    telemetry = Telemetry(TelemetryConfig(), "http://127.0.0.1:1")
    telemetry.count_feedback("sg", "female", "tp")
    telemetry.count_feedback("sg", "female", "tp")
    telemetry.policy_reload("failed")
    telemetry.record_drift("sg", "score", "psi", 0.3)
    telemetry.breaker_transition(Transition("sg", "closed", "open", "tripped", {}, 0.0))
    telemetry.watch_total("queue.dropped", lambda: 7)
    telemetry.watch_fairness(
        lambda: {
            "sg": {"groups": {"female": {"selection_rate": 0.4}}, "demographic_parity_ratio": 0.8}
        }
    )
    found = samples(telemetry)
    assert found[key("guardproxy_feedback_total", region="sg", group="female", cell="tp")] == 2
    assert found[key("guardproxy_policy_reloads_total", result="failed")] == 1
    assert found[key("guardproxy_drift", region="sg", signal="score", test="psi")] == 0.3
    assert found[key("guardproxy_breaker_transitions_total", region="sg", to="open")] == 1
    assert found[key("guardproxy_breaker_state", region="sg")] == 2
    assert found[key("guardproxy_queue_dropped_total")] == 7
    rate = key("guardproxy_fairness_selection_rate", region="sg", group="female")
    assert found[rate] == 0.4
    assert found[key("guardproxy_fairness_demographic_parity_ratio", region="sg")] == 0.8


def test_bad_names_are_refused() -> None:
    telemetry = Telemetry(TelemetryConfig(), "http://127.0.0.1:1")
    with pytest.raises(ValueError, match="tp, fp, tn or fn"):
        telemetry.count_feedback("sg", "female", "maybe")
    with pytest.raises(ValueError, match="unknown total"):
        telemetry.watch_total("requests", lambda: 1)


def test_groups_are_labelled_as_the_policy_allows() -> None:
    labels = GroupLabels()
    assert labels("female", "label") == "female"
    hashed = labels("female", "hashed")
    assert hashed != "female" and len(hashed) == 8 and labels("female", "hashed") == hashed
    assert labels("female", "none") == "all"


def test_attribute_sets_are_bounded() -> None:
    cache = AttributeCache("region")
    first = cache.get("a")
    assert cache.get("a") is first and first == {"region": "a"}
    for i in range(5000):
        cache.get(str(i))
    assert cache.get("fresh") == {"region": "other"}


def test_disabled_telemetry_adds_nothing() -> None:
    telemetry = Telemetry(TelemetryConfig(disabled=True), "http://127.0.0.1:1")

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response()

    assert telemetry.traced(handler) is handler
    assert telemetry.tracer is NO_TRACER
    assert b"disabled" in telemetry.metrics_text()
    assert telemetry.status()["enabled"] is False


def per_request_seconds(telemetry: Telemetry | None, n: int = 20_000) -> float:
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


def test_per_request_cost_is_a_few_microseconds() -> None:
    bare = per_request_seconds(None)
    metrics_only = per_request_seconds(Telemetry(TelemetryConfig(), "http://127.0.0.1:1"))
    sampled_off = TelemetryConfig(traces_endpoint="http://127.0.0.1:1/v1/traces", sampler_off=True)
    off = per_request_seconds(Telemetry(sampled_off, "http://127.0.0.1:1"))
    disabled = per_request_seconds(Telemetry(TelemetryConfig(disabled=True), "http://127.0.0.1:1"))
    tracing = Telemetry(
        TelemetryConfig(traces_endpoint="http://127.0.0.1:1/v1/traces"), "http://u:1"
    )
    traced = per_request_seconds(tracing)
    assert tracing.status()["spans"]["dropped"] > 0  # the exporter is behind: spans are dropped
    asyncio.run(tracing.shutdown(1.0))
    print(
        f"\nper request: bare {bare * 1e6:.1f} us, disabled +{(disabled - bare) * 1e6:.1f} us, "
        f"metrics +{(metrics_only - bare) * 1e6:.1f} us, sampler off +{(off - bare) * 1e6:.1f} us, "
        f"traced +{(traced - bare) * 1e6:.1f} us"
    )
    assert disabled - bare < 2e-6
    assert metrics_only - bare < 100e-6  # three SDK histogram records dominate
    assert traced - bare < 400e-6
