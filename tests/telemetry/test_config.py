"""TelemetryConfig from the OTLP environment, and the resource that names the pod."""

from __future__ import annotations

import pytest

from guardproxy import __version__
from guardproxy.telemetry import TelemetryConfig, TelemetryError
from guardproxy.telemetry.config import build_resource


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


def test_attribute_length_limits_span_then_general_then_default() -> None:
    assert TelemetryConfig.from_env({}).attribute_length == 1024
    general = {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "300"}
    assert TelemetryConfig.from_env(general).attribute_length == 300
    span = {**general, "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "200"}
    assert TelemetryConfig.from_env(span).attribute_length == 200
    for bad in ("0", "-1", "lots"):
        with pytest.raises(TelemetryError, match="OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"):
            TelemetryConfig.from_env({"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": bad})


def test_protocols_per_signal_and_their_endpoints() -> None:
    grpc = TelemetryConfig.from_env(
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "GRPC", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    )
    assert (grpc.traces_protocol, grpc.metrics_protocol) == ("grpc", "grpc")
    assert grpc.traces_endpoint == grpc.metrics_endpoint == "http://c:4317"  # used as is
    mixed = TelemetryConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
        }
    )
    assert (mixed.traces_protocol, mixed.metrics_protocol) == ("grpc", "http/protobuf")
    assert mixed.traces_endpoint == "http://c:4317"
    assert mixed.metrics_endpoint == "http://c:4317/v1/metrics"
    traces_only = TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"})
    assert (traces_only.traces_protocol, traces_only.metrics_protocol) == ("grpc", "http/protobuf")
    flag = TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, otlp_endpoint="c:1")
    assert flag.traces_endpoint == "c:1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc/web"),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http"),
    ],
)
def test_an_unsupported_protocol_is_a_clear_error(name: str, value: str) -> None:
    with pytest.raises(TelemetryError, match=f"{name}=.*expected http/protobuf or grpc"):
        TelemetryConfig.from_env({name: value})


def test_only_cumulative_temporality_is_accepted() -> None:
    name = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
    assert TelemetryConfig.from_env({name: "Cumulative"}).metrics_protocol == "http/protobuf"
    with pytest.raises(TelemetryError, match="cumulative metrics only"):
        TelemetryConfig.from_env({name: "delta"})


def test_resource_defaults_identity_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTNAME", "pod-from-hostname")
    attributes = build_resource(TelemetryConfig(region="sg")).attributes
    assert attributes["service.name"] == "guardproxy"
    assert attributes["service.version"] == __version__
    assert attributes["guardproxy.region"] == "sg"
    assert attributes["k8s.pod.name"] == "pod-from-hostname"
    monkeypatch.setenv("POD_NAME", "proxy-7f9")
    monkeypatch.setenv("POD_NAMESPACE", "models")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "scorer")
    monkeypatch.setenv(
        "OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,service.version=2024.1"
    )
    attributes = build_resource(TelemetryConfig()).attributes
    assert attributes["k8s.pod.name"] == "proxy-7f9"
    assert attributes["k8s.namespace.name"] == "models"
    assert attributes["service.name"] == "scorer"
    assert attributes["deployment.environment"] == "prod"
    assert attributes["service.version"] == "2024.1"
    named = build_resource(TelemetryConfig(service_name="from-flag")).attributes
    assert named["service.name"] == "from-flag"
