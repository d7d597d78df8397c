"""Telemetry fixtures: a clean OpenTelemetry environment and readers of the Prometheus text."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from guardproxy.telemetry import Telemetry

Sample = tuple[str, frozenset[tuple[str, str]]]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No OTEL_* or pod identity from the machine leaks into these tests."""
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    for name in ("POD_NAME", "POD_NAMESPACE", "HOSTNAME"):
        monkeypatch.delenv(name, raising=False)
    yield


def samples(telemetry: Telemetry) -> dict[Sample, float]:
    """Every Prometheus sample, keyed by name and labels (scope labels dropped)."""
    return samples_of(telemetry.metrics_text().decode())


def samples_of(text: str) -> dict[Sample, float]:
    """Every sample of an exposition text, keyed by name and labels (scope labels dropped)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if not k.startswith("otel_"))
            out[(s.name, labels)] = s.value
    return out


def key(name: str, **labels: str) -> Sample:
    """The key `samples` files a sample under."""
    return (name, frozenset(labels.items()))
