"""OpenTelemetry for guardproxy: traces and metrics over OTLP (HTTP or gRPC), and /metrics."""

from guardproxy.hotpath.hooks import NO_TRACER, UpstreamCall, UpstreamTracer
from guardproxy.telemetry.config import TelemetryConfig, TelemetryError
from guardproxy.telemetry.core import Telemetry
from guardproxy.telemetry.readings import FairnessSource

__all__ = [
    "NO_TRACER",
    "FairnessSource",
    "Telemetry",
    "TelemetryConfig",
    "TelemetryError",
    "UpstreamCall",
    "UpstreamTracer",
]
