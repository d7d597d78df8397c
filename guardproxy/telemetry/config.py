"""Telemetry configuration from the standard OTEL_* environment, plus the pod's identity."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource

from guardproxy import __version__

SERVICE_NAME = "guardproxy"
HTTP_PROTOBUF = "http/protobuf"
GRPC = "grpc"
PROTOCOLS = (HTTP_PROTOBUF, GRPC)
SIGNAL_PATHS = {"traces": "v1/traces", "metrics": "v1/metrics"}
TEMPORALITY = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
# Span attribute values are cut at this many characters unless the OTEL_* limits say
# otherwise: a client chooses paths and Host headers up to the 64 KiB head limit, and the
# export queue would hold thousands of spans of them while a collector is away.
ATTRIBUTE_LENGTH = 1024
LENGTH_LIMITS = ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")


class TelemetryError(ValueError):
    """The OTEL_* environment asks for something this build cannot do."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """What to export where; built once from the environment and flags."""

    disabled: bool = False
    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    traces_protocol: str = HTTP_PROTOBUF
    metrics_protocol: str = HTTP_PROTOBUF
    sampler_off: bool = False
    service_name: str | None = None
    region: str = "default"
    timeout: float = 10.0
    max_queue: int = 2048
    export_interval: float = 60.0
    attribute_length: int = ATTRIBUTE_LENGTH

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        otlp_endpoint: str | None = None,
        service_name: str | None = None,
        region: str = "default",
    ) -> TelemetryConfig:
        """Read OTEL_*; an explicit endpoint or service name (flags) wins over the environment."""
        env = os.environ if env is None else env
        check_temporality(env)
        traces, metrics = protocol_of(env, "traces"), protocol_of(env, "metrics")
        return cls(
            disabled=_truthy(env.get("OTEL_SDK_DISABLED")),
            traces_endpoint=signal_endpoint(env, "traces", otlp_endpoint, traces),
            metrics_endpoint=signal_endpoint(env, "metrics", otlp_endpoint, metrics),
            traces_protocol=traces,
            metrics_protocol=metrics,
            sampler_off=env.get("OTEL_TRACES_SAMPLER", "").strip().lower() == "always_off",
            service_name=service_name,
            region=region,
            timeout=_seconds(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10.0),
            max_queue=int(env.get("OTEL_BSP_MAX_QUEUE_SIZE", "2048")),
            export_interval=_seconds(env, "OTEL_METRIC_EXPORT_INTERVAL", 60.0),
            attribute_length=attribute_length(env),
        )

    @property
    def tracing(self) -> bool:
        """Whether spans are made at all (an exporter exists and the sampler is not off)."""
        return not self.disabled and not self.sampler_off and self.traces_endpoint is not None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return float(raw) / 1000.0  # the OTEL_* durations are milliseconds
    except ValueError:
        raise TelemetryError(f"{name}={raw!r}: expected milliseconds") from None


def attribute_length(env: Mapping[str, str]) -> int:
    """The longest span attribute value: the span limit, else the general one, else 1,024."""
    for name in LENGTH_LIMITS:
        raw = env.get(name, "").strip()
        if not raw:
            continue
        if not raw.isdigit() or int(raw) < 1:
            raise TelemetryError(f"{name}={raw!r}: expected a positive number of characters")
        return int(raw)
    return ATTRIBUTE_LENGTH


def protocol_of(env: Mapping[str, str], signal: str) -> str:
    """The OTLP protocol of one signal: its own variable, else the general one, else HTTP."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = env.get(name, "").strip().lower()
        if not value:
            continue
        if value not in PROTOCOLS:
            raise TelemetryError(
                f"{name}={value!r}: expected http/protobuf or grpc (http/json is not supported)"
            )
        return value
    return HTTP_PROTOBUF


def check_temporality(env: Mapping[str, str]) -> None:
    """Metrics are exported cumulative only: the hot-path histograms are kept that way."""
    value = env.get(TEMPORALITY, "").strip().lower()
    if value not in ("", "cumulative"):
        raise TelemetryError(
            f"{TEMPORALITY}={value!r}: guardproxy exports cumulative metrics only "
            "(unset it or set it to cumulative)"
        )


def signal_endpoint(
    env: Mapping[str, str], signal: str, explicit: str | None, protocol: str = HTTP_PROTOBUF
) -> str | None:
    """The OTLP URL for one signal, or None when nothing asks for export.

    Over HTTP a base endpoint gets the signal's path (/v1/traces); over gRPC, as the
    specification says, every endpoint is used as it is.
    """
    if env.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower() == "none":
        return None
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if specific and not explicit:
        return specific  # a signal's own endpoint is used as is, per the specification
    base = explicit or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not base:
        return None
    return base if protocol == GRPC else _join(base, SIGNAL_PATHS[signal])


def _join(base: str, path: str) -> str:
    return f"{base.rstrip('/')}/{path}"


def identity(region: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The pod's identity as resource attributes (Downward API names first, then HOSTNAME)."""
    env = os.environ if env is None else env
    attributes = {"guardproxy.region": region}
    pod = env.get("POD_NAME") or env.get("HOSTNAME")
    if pod:
        attributes["k8s.pod.name"] = pod
    if env.get("POD_NAMESPACE"):
        attributes["k8s.namespace.name"] = env["POD_NAMESPACE"]
    return attributes


def build_resource(config: TelemetryConfig) -> Resource:
    """Defaults (service name and version, identity), overridden by OTEL_RESOURCE_ATTRIBUTES."""
    detected = dict(Resource.create().attributes)
    if str(detected.get("service.name", "")).startswith("unknown_service"):
        del detected["service.name"]
    attributes = {
        "service.name": SERVICE_NAME,
        "service.version": __version__,
        **identity(config.region),
        **detected,
    }
    if config.service_name:
        attributes["service.name"] = config.service_name
    return Resource(attributes)
