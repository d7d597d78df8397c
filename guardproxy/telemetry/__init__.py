"""OpenTelemetry for guardproxy: traces and metrics over OTLP/HTTP, Prometheus text on /metrics."""

from .config import TelemetryConfig, TelemetryError
from .core import Telemetry
from .hooks import NO_TRACER, UpstreamCall, UpstreamTracer
from .instruments import FairnessSource

__all__ = [
    "NO_TRACER",
    "FairnessSource",
    "Telemetry",
    "TelemetryConfig",
    "TelemetryError",
    "UpstreamCall",
    "UpstreamTracer",
]
