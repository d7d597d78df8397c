"""Telemetry configuration, instruments and hot-path cost, without a network."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import timeit
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Histogram, InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from guardproxy.breaker import Transition
from guardproxy.state.base import PredictionRecord
from guardproxy.telemetry import NO_TRACER, Telemetry, TelemetryConfig, TelemetryError
from guardproxy.telemetry.aggregate import Counters, Histograms
from guardproxy.telemetry.config import build_resource
from guardproxy.telemetry.decisions import GroupLabels
from guardproxy.telemetry.instruments import HTTP_BUCKETS, Instruments


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
    return samples_of(telemetry.metrics_text().decode())


def samples_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition text, keyed by name and labels (scope labels dropped)."""
    out = {}
    for family in text_string_to_metric_families(text):
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
            "sg": {
                "groups": {"female": {"selection_rate": 0.4}},
                "disparities": {"demographic_parity_ratio": 0.8},
            }
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
    with pytest.raises(ValueError, match="applied, unchanged or failed"):
        telemetry.policy_reload("ok")


def test_groups_are_labelled_as_the_policy_allows() -> None:
    labels = GroupLabels()
    assert labels("female", "label") == "female"
    hashed = labels("female", "hashed")
    assert hashed != "female" and len(hashed) == 8 and labels("female", "hashed") == hashed
    assert labels("female", "none") == "all"


def test_attribute_sets_are_bounded() -> None:
    counts = Counters(("region",), limit=3)
    for region in ("a", "a", "b", "c", "d", "e"):
        counts.add_key((region,))
    assert sorted((a["region"], n) for a, n in counts.items()) == [
        ("a", 2), ("b", 1), ("c", 1), ("other", 2)
    ]  # fmt: skip
    durations = Histograms(("region",), (1.0,), limit=1)
    durations.record_key(("a",), 0.5)
    durations.record_key(("b",), 2.0)
    assert [p.attributes for p in durations.points()] == [{"region": "a"}, {"region": "other"}]
    with pytest.raises(ValueError, match="expected values for"):
        counts.add_key(("a", "b"))


def test_histogram_buckets_hold_their_upper_bound() -> None:
    durations = Histograms(("method", "route"), (0.1, 1, 10))
    for value in (0.05, 0.1, 0.1000001, 1, 10, 11):
        durations.record_key(("GET", ""), value)
    (point,) = durations.points()
    assert point.buckets == (2, 2, 1, 1) and point.count == 6
    assert point.min == 0.05 and point.max == 11 and point.sum == pytest.approx(22.2500001)
    assert point.attributes == {"method": "GET"}  # an empty slot is no attribute
    with pytest.raises(ValueError, match="strictly increasing"):
        Histograms(("method",), (1.0, 0.5))


def test_the_opentelemetry_calls_land_in_the_same_series() -> None:
    durations = Histograms(("method", "route"), (1.0,))
    durations.record(0.5, {"method": "GET"})
    durations.record_key(("GET", ""), 2.0)
    (point,) = durations.points()
    assert point.buckets == (1, 1) and point.attributes == {"method": "GET"}
    counts = Counters(("region", "cell"))
    counts.add(2, {"region": "sg", "cell": "tp"})
    counts.add_key(("sg", "tp"))
    assert counts.items() == [({"region": "sg", "cell": "tp"}, 3)]
    with pytest.raises(ValueError, match="unknown attributes"):
        counts.add(1, {"region": "sg", "request_id": "r-1"})


def test_disabled_telemetry_adds_nothing() -> None:
    telemetry = Telemetry(TelemetryConfig(disabled=True), "http://127.0.0.1:1")

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response()

    assert telemetry.traced(handler) is handler
    assert telemetry.tracer is NO_TRACER
    assert b"disabled" in telemetry.metrics_text()
    assert telemetry.status()["enabled"] is False


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
    """Per-request cost with spans sampled by parentbased_traceidratio at this ratio."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    tracing = Telemetry(
        TelemetryConfig(traces_endpoint="http://127.0.0.1:1/v1/traces"), "http://u:1"
    )
    cost = min(per_request_seconds(tracing, 5_000) for _ in range(2))
    return cost, tracing


def test_per_request_cost_is_a_few_microseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    bare = min(per_request_seconds(None) for _ in range(3))
    metrics_only = min(
        per_request_seconds(Telemetry(TelemetryConfig(), "http://127.0.0.1:1")) for _ in range(3)
    )
    disabled = per_request_seconds(Telemetry(TelemetryConfig(disabled=True), "http://127.0.0.1:1"))
    rare, quiet = traced_seconds(monkeypatch, "0.01")
    every, busy = traced_seconds(monkeypatch, "1.0")
    assert busy.status()["spans"]["dropped"] > 0  # the exporter is behind: spans are dropped
    asyncio.run(quiet.shutdown(0.2)), asyncio.run(busy.shutdown(0.2))
    print(
        f"\nper request: bare {bare * 1e6:.1f} us, disabled +{(disabled - bare) * 1e6:.1f} us, "
        f"metrics +{(metrics_only - bare) * 1e6:.1f} us, traced at 0.01 "
        f"+{(rare - bare) * 1e6:.1f} us, traced at 1.0 +{(every - bare) * 1e6:.1f} us"
    )
    assert disabled - bare < 2e-6
    assert metrics_only - bare < 15e-6  # was ~40 us with the SDK's synchronous instruments
    assert rare - bare < 40e-6 and rare < every
    assert every - bare < 400e-6


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


def test_metric_records_cost_a_fraction_of_the_sdk_instruments() -> None:
    """A request's metric work (3 histogram records, 1 counter add), 50k times over."""
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
    sdk = [meter.create_histogram(n, "s", explicit_bucket_boundaries_advisory=HTTP_BUCKETS)
           for n in ("server", "client", "overhead")]  # fmt: skip
    decisions = meter.create_counter("decisions")
    route: dict[str, str | int] = {
        "http.request.method": "POST", "http.response.status_code": 200, "http.route": "/x"
    }  # fmt: skip
    rows = {"region": "sg", "group": "female", "outcome": "positive"}

    def with_sdk() -> None:
        sdk[0].record(0.003, route), sdk[1].record(0.002, route), sdk[2].record(0.0004, route)
        decisions.add(1, rows)

    ours = Instruments()
    key, client, row = ("POST", 200, "/x"), ("POST", 200), ("sg", "female", "positive")

    def with_aggregates() -> None:
        ours.server.record_key(key, 0.003)
        ours.client.record_key(client, 0.002)
        ours.overhead.record_key(key, 0.0004)
        ours.decisions.add_key(row)

    before = timeit.timeit(with_sdk, number=50_000) / 50_000
    after = min(timeit.repeat(with_aggregates, number=50_000, repeat=3)) / 50_000
    print(
        f"\nmetric records per request: SDK {before * 1e6:.2f} us, aggregates {after * 1e6:.2f} us"
    )
    assert after < 2e-6 and after < before / 5
    assert ours.server.points()[0].count == 150_000 and not ours.decisions.items()[1:]


def test_histograms_on_metrics_are_what_the_sdk_exporter_would_print() -> None:
    registry = CollectorRegistry()
    meter = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)]).get_meter(
        "guardproxy"
    )
    sdk = meter.create_histogram("http.server.request.duration", "s",
                                 "Duration of HTTP server requests.",
                                 explicit_bucket_boundaries_advisory=HTTP_BUCKETS)  # fmt: skip
    telemetry = Telemetry(TelemetryConfig(), "http://127.0.0.1:1")
    for value, status in ((0.003, 200), (0.01, 200), (0.2, 503), (12.0, 200)):
        sdk.record(value, {"http.request.method": "GET", "http.response.status_code": status})
        telemetry.instruments.server.record_key(("GET", status, ""), value)
    expected = {
        k: v
        for k, v in samples_of(generate_latest(registry).decode()).items()
        if "duration" in k[0]
    }
    found = {k: v for k, v in samples(telemetry).items() if "request_duration" in k[0]}
    assert found == expected and len(found) == 2 * (len(HTTP_BUCKETS) + 3)


def test_otlp_exports_get_the_histograms_in_the_scope() -> None:
    telemetry = Telemetry(TelemetryConfig(), "http://127.0.0.1:1")
    telemetry.instruments.client.record_key(("GET", 200), 0.02)
    resource = Resource({"service.name": "x"})
    empty = telemetry.histograms.merged(MetricsData([]), resource)
    (scope,) = empty.resource_metrics[0].scope_metrics
    (metric,) = scope.metrics
    assert scope.scope.name == "guardproxy" and metric.name == "http.client.request.duration"
    assert isinstance(metric.data, Histogram)
    (point,) = metric.data.data_points
    assert (point.count, point.sum, point.min, point.max) == (1, 0.02, 0.02, 0.02)
    assert point.bucket_counts[2] == 1 and list(point.explicit_bounds) == list(HTTP_BUCKETS)
    again = telemetry.histograms.merged(empty, resource)
    assert [m.name for m in again.resource_metrics[0].scope_metrics[0].metrics] == [
        "http.client.request.duration", "http.client.request.duration"
    ]  # fmt: skip


def test_joined_labels_count_by_confusion_cell() -> None:
    telemetry = Telemetry(TelemetryConfig(), "http://127.0.0.1:1")
    joined = [(record(1), 1), (record(1), 0), (record(0), 0), (record(0), 1), (record(1), 1)]
    telemetry.count_joined(joined)
    found = samples(telemetry)
    cells = {c: found[key("guardproxy_feedback_total", region="sg", group="female", cell=c)]
             for c in ("tp", "fp", "tn", "fn")}  # fmt: skip
    assert cells == {"tp": 2, "fp": 1, "tn": 1, "fn": 1}


def record(decision: int) -> PredictionRecord:
    return PredictionRecord("r", 0.0, "sg", "female", 0.5, decision, 0.5, "p", "t")
