"""Our histograms as the SDK would have exported them: OTLP data points and Prometheus families.

The SDK has no observable histogram, so these are built from the aggregates at collection
time, under the names, units and labels the SDK's own exporters give a histogram.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from guardproxy.telemetry.aggregate import Attributes, Point
from guardproxy.telemetry.instruments import HistogramSpec

UNITS = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": ""}
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(name: str) -> str:
    """The family name the OTel Prometheus exporter gives an instrument (before the unit)."""
    return _INVALID.sub("_", name)


def _scope_labels(scope: InstrumentationScope) -> dict[str, str]:
    return {
        "otel_scope_name": scope.name,
        "otel_scope_schema_url": scope.schema_url or "",
        "otel_scope_version": scope.version or "",
    }


class HistogramCollector(Collector):
    """A prometheus_client collector for the histograms, registered next to the SDK's."""

    def __init__(self, histograms: Sequence[HistogramSpec], scope: InstrumentationScope) -> None:
        self.histograms = histograms
        self.scope = _scope_labels(scope)

    def describe(self) -> list[HistogramMetricFamily]:
        """The families' names, so the registry can refuse duplicates without collecting."""
        return [self._family(spec, []) for spec in self.histograms]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """One family per histogram with every series' cumulative buckets."""
        for spec in self.histograms:
            points = spec.values.points()
            if points:
                yield self._filled(spec, points)

    def _filled(self, spec: HistogramSpec, points: list[Point]) -> HistogramMetricFamily:
        # As the SDK's exporter does: the union of label names, "" where a series has none.
        rows = [{**_labels(point.attributes), **self.scope} for point in points]
        names = sorted({name for row in rows for name in row})
        family = self._family(spec, names)
        for point, row in zip(points, rows, strict=True):
            buckets = _cumulative(spec.values.bounds, point.buckets)
            family.add_metric([row.get(name, "") for name in names], buckets, point.sum)
        return family

    def _family(self, spec: HistogramSpec, labels: list[str]) -> HistogramMetricFamily:
        unit = UNITS.get(spec.unit, spec.unit)
        return HistogramMetricFamily(
            prometheus_name(spec.name), spec.description, labels=labels, unit=unit
        )


def _labels(attributes: Attributes) -> dict[str, str]:
    return {prometheus_name(key): str(value) for key, value in attributes.items()}


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, count in zip([*map(str, bounds), "+Inf"], counts, strict=True):
        total += count
        out.append((bound, float(total)))
    return out


class HistogramMetrics:
    """The histograms as SDK Metric objects (cumulative, since the process started)."""

    def __init__(self, histograms: Sequence[HistogramSpec], scope: InstrumentationScope) -> None:
        self.histograms = histograms
        self.scope = scope
        self.started = time.time_ns()

    def metrics(self) -> list[Metric]:
        """Every histogram that has data, as of now."""
        now = time.time_ns()
        out = []
        for spec in self.histograms:
            points = [self._point(p, spec.values.bounds, now) for p in spec.values.points()]
            if points:
                data = Histogram(points, AggregationTemporality.CUMULATIVE)
                out.append(Metric(spec.name, spec.description, spec.unit, data))
        return out

    def _point(self, point: Point, bounds: Sequence[float], now: int) -> HistogramDataPoint:
        return HistogramDataPoint(
            point.attributes, self.started, now, point.count, point.sum,
            point.buckets, bounds, point.min, point.max,
        )  # fmt: skip

    def merged(self, data: MetricsData, resource: Resource) -> MetricsData:
        """The SDK's collection with the histograms added to this scope's metrics."""
        ours = self.metrics()
        if not ours:
            return data
        resources = list(data.resource_metrics) or [ResourceMetrics(resource, [], "")]
        first = resources[0]
        scopes = list(first.scope_metrics)
        index = next((i for i, s in enumerate(scopes) if s.scope.name == self.scope.name), None)
        if index is None:
            scopes.append(ScopeMetrics(self.scope, ours, ""))
        else:
            scope = scopes[index]
            scopes[index] = ScopeMetrics(scope.scope, [*scope.metrics, *ours], scope.schema_url)
        resources[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
        return MetricsData(resources)
