"""The histograms on /metrics and in OTLP exports, as the SDK's own exporters would write them."""

from __future__ import annotations

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Histogram, MetricsData
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

from guardproxy.telemetry import Telemetry, TelemetryConfig
from guardproxy.telemetry.instruments import HTTP_BUCKETS

from .conftest import samples, samples_of


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
