"""The metrics: plain aggregates the hot path writes, observed by the SDK only when collected."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from guardproxy.telemetry.aggregate import ABSENT, Counters, Histograms
from guardproxy.telemetry.readings import (
    FairnessSource,
    FleetSource,
    Readings,
    read_now,
    read_sliced,
)

Callback = Callable[[CallbackOptions], Iterable[Observation]]
BREAKER_STATES = {"disabled": -1, "closed": 0, "half_open": 1, "open": 2, "forced_open": 3}
TOTALS = ("samples.written", "samples.dropped", "queue.dropped", "logs.dropped")
RELOAD_RESULTS = ("applied", "unchanged", "failed")
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
)  # fmt: skip
SERVER_KEYS = ("http.request.method", "http.response.status_code", "http.route")
CLIENT_KEYS = ("http.request.method", "http.response.status_code")
RPC_KEYS = ("rpc.method", "rpc.grpc.status_code")
NO_ROUTE = ABSENT


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """An instrument as exported: its OTel name, unit (UCUM) and description (Prometheus HELP)."""

    name: str
    unit: str
    description: str


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    """A histogram as exported: the OTel name, unit and description of an aggregate."""

    name: str
    unit: str
    description: str
    values: Histograms


# Counts carry a UCUM annotation ({decision}): the Prometheus exporter drops it, so the
# family is named after what it counts plus _total; ratios and statistics are unit "1".
COUNTERS = {
    "decisions": MetricInfo(
        "guardproxy.decisions", "{decision}",
        "Decisions per scored row (outcome positive or negative); a request blocked, failed, "
        "unscored or passed counts its rows (at least one) under that outcome, group all.",
    ),
    "feedback": MetricInfo(
        "guardproxy.feedback", "{label}",
        "Delayed labels joined to their prediction, by confusion-matrix cell (tp, fp, tn, fn).",
    ),
    "transitions": MetricInfo(
        "guardproxy.breaker.transitions", "{transition}",
        "Circuit breaker state changes, by the state entered.",
    ),
    "reloads": MetricInfo(
        "guardproxy.policy.reloads", "{reload}",
        "Policy directory reloads, by result (applied, unchanged, failed).",
    ),
    "samples.written": MetricInfo(
        "guardproxy.samples.written", "{sample}", "Redacted review samples written to the sink.",
    ),
    "samples.dropped": MetricInfo(
        "guardproxy.samples.dropped", "{sample}",
        "Review samples dropped: their queue was full or the sink failed.",
    ),
    "queue.dropped": MetricInfo(
        "guardproxy.queue.dropped", "{observation}",
        "Guarded exchanges the monitors never saw because their queue was full.",
    ),
    "logs.dropped": MetricInfo(
        "guardproxy.logs.dropped", "{record}",
        "Log records dropped because the log writer fell behind.",
    ),
}  # fmt: skip
GROUP_RATES = {
    "selection_rate": "Share of a group's decided rows that were positive.",
    "true_positive_rate": "Share of a group's rows labeled positive that were decided positive.",
    "false_positive_rate": "Share of a group's rows labeled negative that were decided positive.",
}
MODEL_VALUES = {
    "demographic_parity_difference": "Largest gap in selection rate between a model's groups.",
    "demographic_parity_ratio": (
        "Disparate impact: the smallest over the largest selection rate of a model's groups; "
        "below 0.8 fails the four-fifths rule."
    ),
    "equal_opportunity_difference": ("Largest gap in true positive rate between a model's groups."),
    "equalized_odds_difference": (
        "Largest gap in true or false positive rate between a model's groups."
    ),
}
DRIFT = MetricInfo(
    "guardproxy.drift", "1",
    "Latest drift statistic of a model's window against its reference, by signal and test "
    "(psi, ks, js, chi2).",
)  # fmt: skip
MODEL_HEALTH = MetricInfo(
    "guardproxy.model.health", "1",
    "How badly a model behaves now: the sum of its problems' severities (0: healthy).",
)  # fmt: skip
MODEL_PROBLEM = MetricInfo(
    "guardproxy.model.problem", "1",
    "Severity of a model's problems of one kind (breaker, drift, fairness, errors, ...).",
)  # fmt: skip
BREAKER_STATE = MetricInfo(
    "guardproxy.breaker.state", "1",
    "Circuit breaker state: -1 disabled, 0 closed, 1 half-open, 2 open, 3 forced open.",
)  # fmt: skip


class Instruments:
    """Every guardproxy metric: hot-path aggregates plus what the gauges read."""

    def __init__(self) -> None:
        self.fairness: FairnessSource = dict
        self.fleet: FleetSource = list
        # What the gauges show: read from the sources on the loop before a collection, so a
        # collection in another thread never walks the monitors' state. Swapped whole.
        self.readings = Readings()
        self.label: Callable[[str, str, str], str] = lambda region, model, group: group
        # region, model, version, signal, test: versions the monitors keep (forget_drift)
        self.drift: dict[tuple[str, str, str, str, str], float] = {}
        self.breaker: dict[tuple[str, str], str] = {}  # (region, model) -> state
        self.totals: dict[str, Callable[[], int]] = {}
        self.reload_source: Callable[[], Mapping[str, int]] = dict
        self.server = Histograms(SERVER_KEYS, HTTP_BUCKETS)
        self.client = Histograms(CLIENT_KEYS, HTTP_BUCKETS)
        self.overhead = Histograms(SERVER_KEYS, OVERHEAD_BUCKETS)
        self.rpc = Histograms(RPC_KEYS, HTTP_BUCKETS)
        self.decisions = Counters(("region", "model", "group", "outcome"))
        self.feedback = Counters(("region", "model", "group", "cell"))
        self.transitions = Counters(("region", "model", "to"))
        self.reloads = Counters(("result",))
        self.histograms = (
            HistogramSpec("http.server.request.duration", "s",
                          "Duration of HTTP server requests on the data port.", self.server),
            HistogramSpec("http.client.request.duration", "s",
                          "Duration of requests to the upstream model server.", self.client),
            HistogramSpec("guardproxy.overhead", "s",
                          "Time a request spent in the proxy, outside the upstream.",
                          self.overhead),
            HistogramSpec("rpc.server.call.duration", "s",
                          "Duration of gRPC calls on the gRPC port.", self.rpc),
        )  # fmt: skip

    def observe(self, meter: Meter) -> None:
        """Register the observable instruments that read these values at collection time."""
        for name, counts in (
            ("decisions", self.decisions),
            ("feedback", self.feedback),
            ("transitions", self.transitions),
        ):
            _counter(meter, COUNTERS[name], _counts(counts))
        _counter(meter, COUNTERS["reloads"], self._reloads)
        for rate, description in GROUP_RATES.items():
            _gauge(meter, fairness_info(rate, description), self._rate(rate))
        for value, description in MODEL_VALUES.items():
            _gauge(meter, fairness_info(value, description), self._model(value))
        _gauge(meter, DRIFT, self._drift)
        _gauge(meter, MODEL_HEALTH, self._health)
        _gauge(meter, MODEL_PROBLEM, self._problems)
        _gauge(meter, BREAKER_STATE, self._breaker)
        for name in TOTALS:
            _counter(meter, COUNTERS[name], self._total(name))

    def _reloads(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = {str(attributes["result"]): n for attributes, n in self.reloads.items()}
        for result, n in self.reload_source().items():
            totals[result] = totals.get(result, 0) + n
        for result, n in totals.items():
            yield Observation(n, {"result": result})

    def read_now(self) -> None:
        """Read the gauges' sources in one go (a caller that is not on the loop: tests)."""
        self.readings = read_now(self.fairness, self.fleet)

    async def read_sliced(self) -> None:
        """Read the gauges' sources on the loop, a few ms at a time (once per collection)."""
        self.readings = await read_sliced(self.fairness, self.fleet)

    def _rate(self, name: str) -> Callback:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            for (region, model, version), values in self.readings.fairness.items():
                for group, rates in (values.get("groups") or {}).items():
                    value = rates.get(name)
                    if value is not None:
                        label = self.label(region, model, group)
                        attributes = {
                            "region": region, "model": model, "version": version, "group": label,
                        }  # fmt: skip
                        yield Observation(float(value), attributes)

        return observe

    def _model(self, name: str) -> Callback:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            for (region, model, version), values in self.readings.fairness.items():
                value = (values.get("disparities") or {}).get(name)
                if value is not None:
                    attributes = {"region": region, "model": model, "version": version}
                    yield Observation(float(value), attributes)

        return observe

    def _drift(self, options: CallbackOptions) -> Iterable[Observation]:
        for (region, model, version, signal, test), value in list(self.drift.items()):
            model_labels = {"region": region, "model": model, "version": version}
            yield Observation(value, {**model_labels, "signal": signal, "test": test})

    def _health(self, options: CallbackOptions) -> Iterable[Observation]:
        for row in self.readings.fleet:
            yield Observation(float(row.score), {"region": row.region, "model": row.model})

    def _problems(self, options: CallbackOptions) -> Iterable[Observation]:
        for row in self.readings.fleet:
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


def fairness_info(name: str, description: str) -> MetricInfo:
    """A fairness gauge, named as Fairlearn names the value (a ratio: unit 1)."""
    text = f"{description.rstrip('.')} (Fairlearn {name})."
    return MetricInfo(f"guardproxy.fairness.{name}", "1", text)


def _counter(meter: Meter, info: MetricInfo, callback: Callback) -> None:
    meter.create_observable_counter(info.name, [callback], info.unit, info.description)


def _gauge(meter: Meter, info: MetricInfo, callback: Callback) -> None:
    meter.create_observable_gauge(info.name, [callback], info.unit, info.description)


def catalogue(instruments: Instruments) -> list[MetricInfo]:
    """Every instrument guardproxy exports, with its unit and description."""
    fairness = [fairness_info(n, d) for n, d in {**GROUP_RATES, **MODEL_VALUES}.items()]
    histograms = [MetricInfo(h.name, h.unit, h.description) for h in instruments.histograms]
    gauges = [DRIFT, MODEL_HEALTH, MODEL_PROBLEM, BREAKER_STATE]
    return [*COUNTERS.values(), *fairness, *gauges, *histograms]
