"""The OTLP exporters for a protocol: http/protobuf (always installed) or grpc (an extra)."""

from __future__ import annotations

import importlib
from types import ModuleType

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter

from guardproxy.telemetry.config import GRPC, TelemetryError

# What every metric exporter is given, and what the readers then ask of the SDK: the
# hot-path histograms are cumulative since start, so everything else is too.
CUMULATIVE: dict[type, AggregationTemporality] = {
    kind: AggregationTemporality.CUMULATIVE
    for kind in (
        Counter,
        UpDownCounter,
        Histogram,
        ObservableCounter,
        ObservableUpDownCounter,
        ObservableGauge,
    )
}
MODULES = {
    ("traces", "http/protobuf"): "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    ("metrics", "http/protobuf"): "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    ("traces", GRPC): "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    ("metrics", GRPC): "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
}
GRPC_EXTRA = "pip install 'guardproxy[otlp-grpc]'"


def exporter_module(signal: str, protocol: str) -> ModuleType:
    """The module of one signal's OTLP exporter; a missing gRPC exporter is a clear error."""
    try:
        return importlib.import_module(MODULES[(signal, protocol)])
    except ImportError as exc:
        if protocol != GRPC:
            raise
        raise TelemetryError(
            f"OTLP over gRPC ({signal}) needs opentelemetry-exporter-otlp-proto-grpc, "
            f"which is not installed: {GRPC_EXTRA}, or set OTEL_EXPORTER_OTLP_PROTOCOL="
            f"http/protobuf ({exc})"
        ) from None


def span_exporter(protocol: str, endpoint: str, timeout: float) -> SpanExporter:
    """An OTLP span exporter for the protocol."""
    module = exporter_module("traces", protocol)
    exporter: SpanExporter = module.OTLPSpanExporter(endpoint=endpoint, timeout=timeout)
    return exporter


def metric_exporter(protocol: str, endpoint: str, timeout: float) -> MetricExporter:
    """An OTLP metric exporter for the protocol, cumulative for every instrument."""
    module = exporter_module("metrics", protocol)
    exporter: MetricExporter = module.OTLPMetricExporter(
        endpoint=endpoint, timeout=timeout, preferred_temporality=CUMULATIVE
    )
    return exporter
