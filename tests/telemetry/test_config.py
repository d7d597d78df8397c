"""TelemetryConfig from the OTLP environment, and the resource that names the pod."""

from __future__ import annotations

import logging

import pytest

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
