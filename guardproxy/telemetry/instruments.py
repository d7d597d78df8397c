"""The metrics: plain aggregates the hot path writes, observed by the SDK only when collected."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from guardproxy.telemetry.aggregate import ABSENT, Counters, Histograms

# Fairness values per model version as FairnessEngine.gauges() publishes them:
# {(region, model, version): {"groups": {group: {"selection_rate": x, ...}},
#                             "disparities": {"demographic_...": y}}}
FairnessSource = Callable[[], Mapping[tuple[str, str, str], Mapping[str, Any]]]
# The fleet view's rows, worst first: each with region, model, score and problems.
FleetSource = Callable[[], Sequence[Any]]
Callback = Callable[[CallbackOptions], Iterable[Observation]]
GROUP_RATES = ("selection_rate", "true_positive_rate", "false_positive_rate")
MODEL_VALUES = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equal_opportunity_difference",
    "equalized_odds_difference",
)
BREAKER_STATES = {"disabled": -1, "closed": 0, "half_open": 1, "open": 2, "forced_open": 3}
TOTALS = ("samples.written", "samples.dropped", "queue.dropped")
RELOAD_RESULTS = ("applied", "unchanged", "failed")
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
)  # fmt: skip
SERVER_KEYS = ("http.request.method", "http.response.status_code", "http.route")
CLIENT_KEYS = ("http.request.method", "http.response.status_code")
NO_ROUTE = ABSENT


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    """A histogram as exported: the OTel name, unit and description of an aggregate."""

    name: str
    unit: str
    description: str
    values: Histograms


class Instruments:
    """Every guardproxy metric: hot-path aggregates plus what the gauges read."""

    def __init__(self) -> None:
        self.fairness: FairnessSource = dict
        self.fleet: FleetSource = list
        self.label: Callable[[str, str, str], str] = lambda region, model, group: group
        self.drift: dict[tuple[str, str, str, str], float] = {}  # region, model, signal, test
        self.breaker: dict[tuple[str, str], str] = {}  # (region, model) -> state
        self.totals: dict[str, Callable[[], int]] = {}
        self.reload_source: Callable[[], Mapping[str, int]] = dict
        self.server = Histograms(SERVER_KEYS, HTTP_BUCKETS)
        self.client = Histograms(CLIENT_KEYS, HTTP_BUCKETS)
        self.overhead = Histograms(SERVER_KEYS, OVERHEAD_BUCKETS)
        self.decisions = Counters(("region", "model", "group", "outcome"))
        self.feedback = Counters(("region", "model", "group", "cell"))
        self.transitions = Counters(("region", "model", "to"))
        self.reloads = Counters(("result",))
        self.histograms = (
            HistogramSpec("http.server.request.duration", "s",
                          "Duration of HTTP server requests.", self.server),
            HistogramSpec("http.client.request.duration", "s",
                          "Duration of upstream requests.", self.client),
            HistogramSpec("guardproxy.overhead", "s",
                          "Time a request spent in the proxy, outside the upstream.",
                          self.overhead),
        )  # fmt: skip

    def observe(self, meter: Meter) -> None:
        """Register the observable instruments that read these values at collection time."""
        counters = (
            ("guardproxy.decisions", self.decisions, "Decisions per row."),
            ("guardproxy.feedback", self.feedback, "Joined labels by cell."),
            ("guardproxy.breaker.transitions", self.transitions, ""),
        )
        for name, counts, description in counters:
            meter.create_observable_counter(name, [_counts(counts)], "1", description)
        meter.create_observable_counter("guardproxy.policy.reloads", [self._reloads], "1")
        for name in GROUP_RATES:
            meter.create_observable_gauge(f"guardproxy.fairness.{name}", [self._rate(name)], "1")
        for name in MODEL_VALUES:
            meter.create_observable_gauge(f"guardproxy.fairness.{name}", [self._model(name)], "1")
        meter.create_observable_gauge("guardproxy.drift", [self._drift], "1")
        meter.create_observable_gauge(
            "guardproxy.model.health",
            [self._health],
            "1",
            "How badly a model behaves now: the sum of its problems' severities (0: healthy).",
        )
        meter.create_observable_gauge(
            "guardproxy.model.problem",
            [self._problems],
            "1",
            "Severity of a model's problems of one kind (breaker, drift, fairness, errors, ...).",
        )
        meter.create_observable_gauge("guardproxy.breaker.state", [self._breaker], "1")
        for name in TOTALS:
            meter.create_observable_counter(f"guardproxy.{name}", [self._total(name)], "1")

    def _reloads(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = {str(attributes["result"]): n for attributes, n in self.reloads.items()}
        for result, n in self.reload_source().items():
            totals[result] = totals.get(result, 0) + n
        for result, n in totals.items():
            yield Observation(n, {"result": result})

    def _rate(self, name: str) -> Callback:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            for (region, model, _), values in self.fairness().items():
                for group, rates in (values.get("groups") or {}).items():
                    value = rates.get(name)
                    if value is not None:
                        label = self.label(region, model, group)
                        attributes = {"region": region, "model": model, "group": label}
                        yield Observation(float(value), attributes)

        return observe

    def _model(self, name: str) -> Callback:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            for (region, model, _), values in self.fairness().items():
                value = (values.get("disparities") or {}).get(name)
                if value is not None:
                    yield Observation(float(value), {"region": region, "model": model})

        return observe

    def _drift(self, options: CallbackOptions) -> Iterable[Observation]:
        for (region, model, signal, test), value in list(self.drift.items()):
            attributes = {"region": region, "model": model, "signal": signal, "test": test}
            yield Observation(value, attributes)

    def _health(self, options: CallbackOptions) -> Iterable[Observation]:
        for row in self.fleet():
            yield Observation(float(row.score), {"region": row.region, "model": row.model})

    def _problems(self, options: CallbackOptions) -> Iterable[Observation]:
        for row in self.fleet():
            kinds: dict[str, float] = {}
            for problem in row.problems:
                kinds[problem.kind] = kinds.get(problem.kind, 0.0) + problem.severity
            for kind, severity in kinds.items():
                attributes = {"region": row.region, "model": row.model, "kind": kind}
                yield Observation(severity, attributes)

    def _breaker(self, options: CallbackOptions) -> Iterable[Observation]:
        for (region, model), state in list(self.breaker.items()):
            yield Observation(BREAKER_STATES.get(state, 0), {"region": region, "model": model})

    def _total(self, name: str) -> Callback:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            read = self.totals.get(name)
            if read is not None:
                yield Observation(read())

        return observe


def _counts(counters: Counters) -> Callback:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        for attributes, n in counters.items():
            yield Observation(n, attributes)

    return observe
