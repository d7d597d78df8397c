"""The metric instruments, their bounded attribute sets, and the values gauges observe."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

# Fairness values per region as the engine publishes them:
# {region: {"groups": {group: {"selection_rate": x, ...}}, "demographic_parity_ratio": y, ...}}
FairnessSource = Callable[[], Mapping[str, Mapping[str, Any]]]
GROUP_RATES = ("selection_rate", "true_positive_rate", "false_positive_rate")
REGION_VALUES = ("demographic_parity_ratio", "equal_opportunity_difference")
BREAKER_STATES = {"disabled": -1, "closed": 0, "half_open": 1, "open": 2, "forced_open": 3}
TOTALS = ("samples.written", "samples.dropped", "queue.dropped")
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
MAX_ATTRIBUTE_SETS = 4096

Attributes = dict[str, str | int]


class AttributeCache:
    """One frozen dict per attribute tuple, so the hot path never builds dicts."""

    __slots__ = ("_cache", "_keys")

    def __init__(self, *keys: str) -> None:
        self._keys = keys
        self._cache: dict[tuple[str | int, ...], Attributes] = {}

    def get(self, *values: str | int) -> Attributes:
        """The attribute dict for these values (bounded: beyond the cap, values become 'other')."""
        attributes = self._cache.get(values)
        if attributes is None:
            if len(self._cache) >= MAX_ATTRIBUTE_SETS:
                values = tuple("other" for _ in values)
            attributes = self._cache.setdefault(values, dict(zip(self._keys, values, strict=True)))
        return attributes


class Instruments:
    """Every guardproxy instrument on one meter."""

    def __init__(self, meter: Meter) -> None:
        self.fairness: FairnessSource = dict
        self.label: Callable[[str, str], str] = lambda region, group: group
        self.drift: dict[tuple[str, str, str], float] = {}
        self.breaker: dict[str, str] = {}
        self.totals: dict[str, Callable[[], int]] = {}
        self.server = meter.create_histogram(
            "http.server.request.duration", "s", "Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=HTTP_BUCKETS,
        )  # fmt: skip
        self.client = meter.create_histogram(
            "http.client.request.duration", "s", "Duration of upstream requests.",
            explicit_bucket_boundaries_advisory=HTTP_BUCKETS,
        )  # fmt: skip
        self.overhead = meter.create_histogram(
            "guardproxy.overhead", "s", "Time a request spent in the proxy, outside the upstream.",
            explicit_bucket_boundaries_advisory=OVERHEAD_BUCKETS,
        )  # fmt: skip
        self.decisions = meter.create_counter("guardproxy.decisions", "1", "Decisions per row.")
        self.feedback = meter.create_counter("guardproxy.feedback", "1", "Joined labels by cell.")
        self.transitions = meter.create_counter("guardproxy.breaker.transitions", "1")
        self.reloads = meter.create_counter("guardproxy.policy.reloads", "1")
        self._observe(meter)

    def _observe(self, meter: Meter) -> None:
        for name in GROUP_RATES:
            meter.create_observable_gauge(f"guardproxy.fairness.{name}", [self._rate(name)], "1")
        for name in REGION_VALUES:
            meter.create_observable_gauge(f"guardproxy.fairness.{name}", [self._region(name)], "1")
        meter.create_observable_gauge("guardproxy.drift", [self._drift], "1")
        meter.create_observable_gauge("guardproxy.breaker.state", [self._breaker], "1")
        for name in TOTALS:
            meter.create_observable_counter(f"guardproxy.{name}", [self._total(name)], "1")

    def _rate(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            for region, values in self.fairness().items():
                for group, rates in (values.get("groups") or {}).items():
                    value = rates.get(name)
                    if value is not None:
                        label = self.label(region, group)
                        yield Observation(float(value), {"region": region, "group": label})

        return observe

    def _region(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            for region, values in self.fairness().items():
                value = values.get(name)
                if value is not None:
                    yield Observation(float(value), {"region": region})

        return observe

    def _drift(self, options: CallbackOptions) -> Iterable[Observation]:
        for (region, signal, test), value in list(self.drift.items()):
            yield Observation(value, {"region": region, "signal": signal, "test": test})

    def _breaker(self, options: CallbackOptions) -> Iterable[Observation]:
        for region, state in list(self.breaker.items()):
            yield Observation(BREAKER_STATES.get(state, 0), {"region": region})

    def _total(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            read = self.totals.get(name)
            if read is not None:
                yield Observation(read())

        return observe
