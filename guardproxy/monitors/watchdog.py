"""Watchdog: turns each model's drift and fairness windows into windows for its breaker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol, cast

from guardproxy.breaker.board import BreakerBoard
from guardproxy.hotpath.observation import Observation
from guardproxy.monitors.drift import Clock, WindowResult
from guardproxy.monitors.fairness import fairness_report
from guardproxy.monitors.modeldrift import ModelDrift, Row
from guardproxy.policy.models import FairnessSpec, ModelPolicy
from guardproxy.policy.table import CompiledModel
from guardproxy.policy.thresholds import ModelKey
from guardproxy.state.base import key_text
from guardproxy.state.counts import GroupCounts

log = logging.getLogger("guardproxy.monitors")

VERSIONS_KEPT = 8  # model versions with live drift monitors, per model
DECISION_VALUES = {
    "fairness.disparate_impact": "demographic_parity_ratio",
    "fairness.demographic_parity_difference": "demographic_parity_difference",
}
LABEL_VALUES = {
    "fairness.equal_opportunity_difference": "equal_opportunity_difference",
    "fairness.equalized_odds_difference": "equalized_odds_difference",
}


class DriftTelemetry(Protocol):
    """Where the latest drift statistics go."""

    def record_drift(self, key: ModelKey, signal: str, test: str, value: float) -> None:
        """One statistic of a completed window."""

    def forget_drift(self, key: ModelKey) -> None:
        """A model version whose drift is no longer kept."""


class FairnessCounts(Protocol):
    """The fairness engine's counters (cumulative; the fleet's with Redis)."""

    def model_keys(self) -> list[ModelKey]:
        """Model versions with counters."""

    def counts(self, key: ModelKey) -> dict[str, GroupCounts]:
        """A model version's counters per group."""


def rounds(results: Sequence[WindowResult]) -> list[dict[str, float]]:
    """Completed windows merged into breaker windows: the i-th window of every signal together."""
    merged: list[dict[str, float]] = []
    seen: dict[str, int] = {}
    for result in results:
        if result.group != "*":
            continue
        index = seen[result.signal] = seen.get(result.signal, -1) + 1
        if index == len(merged):
            merged.append({})
        merged[index].update(result.monitor_values())
    return merged


class FairnessWindows:
    """A model version's fairness windows for its breaker.

    Parity closes after `window` decisions, counted here from the monitors' observations with
    at most `window / min_calls` rows of one request (evenly spaced), so one batch cannot
    fill a window; opportunity closes after `window` labels, from the engine's counts.
    """

    def __init__(self, policy: ModelPolicy) -> None:
        spec = cast(FairnessSpec, policy.fairness)
        self.policy, self.window, self.groups = policy, spec.window, set(policy.groups.values)
        self.rows_per_request = -(-spec.window // policy.breaker.min_calls)  # rounded up
        self.decided: dict[str, GroupCounts] = {}
        self.decisions = 0
        self.labeled: dict[str, GroupCounts] | None = None

    def decide(self, share: Observation) -> dict[str, float] | None:
        """Count a request's share of decisions; the parity values when a window closes."""
        groups, decided = self.groups, self.decided
        for group, _, _, decision in share.verdicts:  # unpacked: a tuple's fields are slow
            if groups and group not in groups:
                continue
            counts = decided.get(group)
            if counts is None:
                counts = decided[group] = GroupCounts()
            counts.decisions += 1
            counts.selected += decision
            self.decisions += 1
        if self.decisions < self.window:
            return None
        values = _values(decided, DECISION_VALUES)
        self.decided, self.decisions = {}, 0
        return values or None

    def update(self, counts: Mapping[str, GroupCounts]) -> dict[str, float] | None:
        """The opportunity values when a label window has closed since the last update."""
        counts = {  # copies: the source may keep counting into its own objects
            g: GroupCounts(**c.to_dict())
            for g, c in counts.items()
            if not self.groups or g in self.groups
        }
        if self.labeled is None:
            self.labeled = counts
            return None
        delta = _delta(counts, self.labeled)
        if sum(c.labeled() for c in delta.values()) < self.window:
            return None
        self.labeled = counts
        return _values(delta, LABEL_VALUES) or None


def _fairness_terms(policy: ModelPolicy) -> tuple[Any, ...]:
    """What a model's fairness windows depend on: a reload that changes them starts afresh."""
    return (policy.fairness, policy.groups.values, policy.breaker.min_calls)


def _delta(
    now: Mapping[str, GroupCounts], then: Mapping[str, GroupCounts]
) -> dict[str, GroupCounts]:
    return {g: c.minus(then.get(g, GroupCounts())) for g, c in now.items()}


def _values(delta: Mapping[str, GroupCounts], names: Mapping[str, str]) -> dict[str, float]:
    report = fairness_report(delta)
    return {name: float(report[key]) for name, key in names.items() if report[key] is not None}


class Watchdog:
    """Monitor consumer: each model version's drift and fairness windows, fed to its breaker."""

    def __init__(
        self,
        board: BreakerBoard,
        fairness: FairnessCounts | None = None,
        telemetry: DriftTelemetry | None = None,
        clock: Clock = time.monotonic,
        threaded: bool = True,
    ) -> None:
        self.board, self.fairness, self.telemetry = board, fairness, telemetry
        self.clock, self.threaded = clock, threaded
        self.drift: dict[ModelKey, ModelDrift] = {}
        self.windows: dict[ModelKey, dict[str, float]] = {}
        self.fairness_windows: dict[ModelKey, FairnessWindows] = {}
        self.window_counts: dict[ModelKey, int] = {}
        self.alarm_counts: dict[ModelKey, int] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=50)
        self.max_compute = 0.0
        self.errors: dict[ModelKey, int] = {}  # drift steps that raised, per model version
        self._busy: set[ModelKey] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def consume(self, batch: list[Observation]) -> Awaitable[None] | None:
        """Group the batch's scored observations by model version; returns the drift work."""
        work: dict[ModelKey, tuple[ModelDrift, list[Observation]]] = {}
        probes: list[tuple[ModelDrift, list[Row]]] = []  # half-open windows the batch completed
        # A batch is mostly one model version: its drift and list are looked up when it changes.
        model, version, drift, rows, fairness = None, "", None, None, None
        for ob in batch:
            if not ob.verdicts or ob.fallback:
                continue  # the monitors watch the model's own answers only
            if ob.model is not model or ob.version != version:
                model, version, rows = ob.model, ob.version, None
                drift = self._drift_of(ob.model, ob.version)
                fairness = self._fairness_of(ob.model, ob.version)
            if fairness is not None:
                share = ob.spread(1 if ob.probe else fairness.rows_per_request)
                values = fairness.decide(share) if share is not None else None
                if values:
                    self._feed((ob.model.region, ob.model.name, ob.version), values)
            if drift is None:
                continue
            # A request is at most 1/min_calls of a window and a probe one row: one batch can
            # neither fill windows (and push the breaker) nor make a reference on its own.
            share = ob.spread(1 if ob.probe else drift.rows_per_request)
            if share is None:
                continue
            if share.probe:
                window = drift.add_probes([share], ob.model.spec.breaker.half_open.probes)
                if window is not None:
                    probes.append((drift, window))
                continue
            if rows is None:
                entry = work.get(drift.key)
                if entry is None:
                    entry = work[drift.key] = (drift, [])
                rows = entry[1]
            rows.append(share)
        return self._observe(list(work.values()), probes) if work or probes else None

    def _fairness_of(self, model: CompiledModel, version: str) -> FairnessWindows | None:
        spec = model.spec
        if spec.fairness is None:
            return None
        return self._fairness_windows((model.region, model.name, version), spec)

    def _fairness_windows(self, key: ModelKey, spec: ModelPolicy) -> FairnessWindows:
        windows = self.fairness_windows.get(key)
        if windows is not None and windows.policy is not spec:
            if _fairness_terms(windows.policy) != _fairness_terms(spec):
                windows = None
            else:
                windows.policy = spec
        if windows is None:
            windows = self.fairness_windows[key] = FairnessWindows(spec)
        return windows

    def _drift_of(self, model: CompiledModel, version: str) -> ModelDrift | None:
        spec = model.spec
        if spec.drift is None:
            return None
        key = (model.region, model.name, version)
        current = self.drift.get(key)
        if current is not None and current.spec is not spec:
            # A reload that changed this model, or its baseline: start afresh.
            if current.spec != spec or current.baseline != model.baseline:
                current = None
            else:
                current.spec = spec
        if current is None:
            current = self.drift[key] = self._new_drift(spec, key, model.baseline)
        return current

    def _new_drift(
        self, spec: ModelPolicy, key: ModelKey, baseline: Mapping[str, Any] | None
    ) -> ModelDrift:
        siblings = [k for k in self.drift if k[:2] == key[:2] and k != key]
        if siblings:
            self.events.append({"at": time.time(), "model": key_text(key), "event": "new version"})
            log.info("model %s/%s: version %r appeared, new drift references", *key)
        for old in siblings[: max(0, len(siblings) - VERSIONS_KEPT + 1)]:
            del self.drift[old]  # bounded: versions arrive from the model server's answers
            if self.telemetry is not None:
                self.telemetry.forget_drift(old)
        return ModelDrift(spec, key, self.clock, baseline)

    async def _observe(
        self,
        work: list[tuple[ModelDrift, list[Observation]]],
        probes: Sequence[tuple[ModelDrift, list[Row]]] = (),
    ) -> None:
        for drift, rows in probes:  # the tests of a probe window run off the loop too
            try:
                async with drift.lock:
                    if self.threaded:
                        values = await asyncio.to_thread(drift.probe_window, rows)
                    else:
                        values = drift.probe_window(rows)
            except Exception:
                self._failed(drift.key)
                continue
            if values:
                self._feed(drift.key, values)
        for drift, observations in work:
            if not drift.lock.locked() and not (self.threaded and drift.due(observations)):
                self._feed_now(drift, observations)  # the usual step: nothing to wait for
                continue
            self._busy.add(drift.key)
            try:
                async with drift.lock:
                    began = time.perf_counter()
                    results = await self._step(drift, observations)
            except Exception:
                self._failed(drift.key)  # the batch's other models go on
                continue
            finally:
                self._busy.discard(drift.key)
            self.max_compute = max(self.max_compute, time.perf_counter() - began)
            self.publish(drift.key, results)

    def _feed_now(self, drift: ModelDrift, observations: list[Observation]) -> None:
        """A model's step on the loop, in one go: no other step can run meanwhile."""
        began = time.perf_counter()
        try:
            results = drift.observe(observations)
        except Exception:
            self._failed(drift.key)
            return
        self.max_compute = max(self.max_compute, time.perf_counter() - began)
        self.publish(drift.key, results)

    def _failed(self, key: ModelKey) -> None:
        """Count a model's drift step that raised; logged the first time only."""
        count = self.errors[key] = self.errors.get(key, 0) + 1
        if count == 1:
            log.exception("drift of %s failed (counted in /status, logged once)", key_text(key))

    async def _step(self, drift: ModelDrift, observations: list[Observation]) -> list[WindowResult]:
        # Feeding is cheap and runs here, between requests; a thread holding the GIL would
        # make the loop wait up to the switch interval at every wakeup instead. Closing a
        # window or a reference computes the tests: that goes to a thread.
        if self.threaded and drift.due(observations):
            return await asyncio.to_thread(drift.observe, observations)
        return drift.observe(observations)

    def publish(self, key: ModelKey, results: Sequence[WindowResult]) -> None:
        """Hand completed drift windows to the model's breaker and to telemetry."""
        for result in results:
            if result.group == "*":
                self._record(key, result)
        for values in rounds(results):
            self._feed(key, values)

    def _record(self, key: ModelKey, result: WindowResult) -> None:
        self.window_counts[key] = self.window_counts.get(key, 0) + 1
        self.alarm_counts[key] = self.alarm_counts.get(key, 0) + result.drift_detected
        if self.telemetry is not None:
            for test, value in result.values.items():
                self.telemetry.record_drift(key, result.signal, test, value)
        if result.drift_detected:
            alarms = ", ".join(k for k, v in result.alarms.items() if v)
            log.info(
                "drift %s %s alarm (%s): %s", key_text(key), result.signal, alarms, result.values
            )

    def _feed(self, key: ModelKey, values: dict[str, float]) -> None:
        self.windows[key] = {**self.windows.get(key, {}), **values}
        breaker = self.board.breaker(key[0], key[1])
        if breaker is not None:
            breaker.observe_window(values)

    def tick(self) -> None:
        """Close due time-based drift windows and completed fairness windows (board ticker)."""
        timed = [
            (drift, list[Observation]())
            for key, drift in self.drift.items()
            if drift.bank.spec.window_seconds is not None and key not in self._busy
        ]
        if timed:  # the window closes off the loop, as in consume
            task = asyncio.get_running_loop().create_task(self._observe(timed))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.fairness is not None:
            self._poll_fairness(self.fairness)

    def _poll_fairness(self, source: FairnessCounts) -> None:
        for key in source.model_keys():
            entry = self.board.policies.current.regions.get(key[0])
            model = entry.model(key[1]) if entry is not None else None
            spec = model.spec.fairness if model is not None else None
            if model is None or spec is None:
                self.fairness_windows.pop(key, None)
                continue
            values = self._fairness_windows(key, model.spec).update(source.counts(key))
            if values:
                self._feed(key, values)

    def status(self) -> dict[str, Any]:
        """Per model version: windows, alarms, last values, warm-up, missing inputs; events."""
        keys = sorted({*self.drift, *self.windows, *self.errors})
        return {
            "max_compute_ms": round(self.max_compute * 1000, 3),
            "events": list(self.events),
            "models": {key_text(k): self.model_status(k) for k in keys},
        }

    def model_status(self, key: ModelKey) -> dict[str, Any]:
        """One model version's drift state."""
        drift = self.drift.get(key)
        return {
            "windows": self.window_counts.get(key, 0),
            "alarmed_windows": self.alarm_counts.get(key, 0),
            "last": self.windows.get(key, {}),
            "signals": drift.last() if drift is not None else {},
            "warming": drift.warming() if drift is not None else {},
            "missing_inputs": drift.missing_inputs() if drift is not None else [],
            "errors": self.errors.get(key, 0),
        }
