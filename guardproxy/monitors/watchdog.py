"""Watchdog: turns drift and fairness windows into breaker windows for every breaker of a region."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol

from guardproxy.breaker.board import BreakerBoard
from guardproxy.guards.exchange import Exchange
from guardproxy.hotpath.admission import FALLBACK_FLAG
from guardproxy.monitors.bank import DriftBank
from guardproxy.monitors.baseline import load_baseline
from guardproxy.monitors.drift import Clock, WindowResult
from guardproxy.monitors.fairness import fairness_report
from guardproxy.monitors.worker import Item
from guardproxy.payloads import Payload, compile_payload
from guardproxy.policy.models import Policy
from guardproxy.policy.table import CompiledPolicy
from guardproxy.state.counts import GroupCounts

log = logging.getLogger("guardproxy.monitors")

Row = dict[str, object]
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

    def record_drift(self, region: str, signal: str, test: str, value: float) -> None:
        """One statistic of a completed window."""


class FairnessCounts(Protocol):
    """The fairness engine's per-region report (cumulative, the fleet's with Redis)."""

    def report(self, region: str) -> dict[str, Any]:
        """Per-group metrics with counts, as fairness_report builds them."""


class RegionDrift:
    """One region's drift bank and the accessors that read its signals from exchanges."""

    def __init__(self, policy: Policy, clock: Clock) -> None:
        spec = policy.drift
        if spec is None:
            raise ValueError(f"region {policy.region!r} has no drift section")
        self.key = (spec, policy.model)
        self.payload: Payload = compile_payload(policy.model, policy.labels, policy.decision)
        baseline = load_baseline(spec.reference.baseline) if spec.reference.baseline else None
        self.bank = DriftBank(spec, policy.region, None, baseline, clock)
        self.inputs = [s for s in self.bank.kinds if s != "score"]
        self.scored = "score" in self.bank.kinds
        self.errors = 0

    def rows(self, ex: Exchange) -> list[Row]:
        """One row per verdict: the score and each watched input (None when unreadable)."""
        rows: list[Row] = [{"score": v.score} if self.scored else {} for v in ex.verdicts]
        for name in self.inputs:
            for row, value in zip(rows, self._feature(ex, name, len(rows)), strict=True):
                row[name] = value
        return rows

    def _feature(self, ex: Exchange, name: str, count: int) -> Sequence[object]:
        try:
            values = self.payload.feature(ex.request_json(), name)
        except Exception:  # a malformed request counts as invalid values, never as a failure
            self.errors += 1
            return [None] * count
        return values if len(values) == count else [None] * count

    def observe(self, exchanges: Sequence[Exchange]) -> list[WindowResult]:
        """Feed the exchanges' rows; the windows they completed (may run in a thread)."""
        rows = [row for ex in exchanges for row in self.rows(ex)]
        return self.bank.observe(rows)

    def warming(self) -> dict[str, int]:
        """Per signal still warming up: how many reference values are in."""
        return {f"{g}/{s}": len(values) for (g, s), values in self.bank.warmup.items()}


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


def counts_of(metrics: Mapping[str, Any]) -> GroupCounts:
    """A group's integer counters back from its fairness_report metrics."""

    def hits(name: str) -> tuple[int, int]:
        metric = metrics[name]
        trials = int(metric["count"])
        return (round(metric["value"] * trials) if metric["value"] is not None else 0), trials

    selected, decisions = hits("selection_rate")
    tp, positives = hits("true_positive_rate")
    fp, negatives = hits("false_positive_rate")
    return GroupCounts(decisions, selected, tp, fp, negatives - fp, positives - tp)


class FairnessWindows:
    """Per region: a window closes after `window` decisions (parity) or labels (opportunity)."""

    def __init__(self, policy: Policy) -> None:
        if policy.fairness is None:
            raise ValueError(f"region {policy.region!r} has no fairness section")
        self.window = policy.fairness.window
        self.groups = set(policy.groups.values)
        self.decided: dict[str, GroupCounts] | None = None
        self.labeled: dict[str, GroupCounts] | None = None

    def update(self, report: Mapping[str, Any]) -> list[dict[str, float]]:
        """Windows completed since the last update, as breaker values."""
        counts = {
            g: counts_of(m)
            for g, m in report.get("groups", {}).items()
            if not self.groups or g in self.groups
        }
        out: list[dict[str, float]] = []
        if self.decided is None or self.labeled is None:
            self.decided = self.labeled = counts
            return out
        delta = _delta(counts, self.decided)
        if sum(c.decisions for c in delta.values()) >= self.window:
            self.decided = counts
            out.append(_values(delta, DECISION_VALUES))
        delta = _delta(counts, self.labeled)
        if sum(c.tp + c.fp + c.tn + c.fn for c in delta.values()) >= self.window:
            self.labeled = counts
            out.append(_values(delta, LABEL_VALUES))
        return [values for values in out if values]


def _delta(
    now: Mapping[str, GroupCounts], then: Mapping[str, GroupCounts]
) -> dict[str, GroupCounts]:
    zero = GroupCounts()
    return {
        g: GroupCounts(**{k: v - then.get(g, zero).to_dict()[k] for k, v in c.to_dict().items()})
        for g, c in now.items()
    }


def _values(delta: Mapping[str, GroupCounts], names: Mapping[str, str]) -> dict[str, float]:
    report = fairness_report(delta)
    return {name: float(report[key]) for name, key in names.items() if report[key] is not None}


class Watchdog:
    """Monitor consumer: drift and fairness windows of each region, fed to its breaker."""

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
        self.drift: dict[str, RegionDrift] = {}
        self.windows: dict[str, dict[str, float]] = {}
        self.fairness_windows: dict[str, FairnessWindows] = {}
        self.window_counts: dict[str, int] = {}
        self.alarm_counts: dict[str, int] = {}
        self.max_compute = 0.0
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def consume(self, batch: list[Item]) -> Awaitable[None] | None:
        """Group the batch's scored exchanges by region; the drift work is returned to await."""
        work: dict[str, tuple[RegionDrift, list[Exchange]]] = {}
        for ex, policy in batch:
            if not ex.verdicts or FALLBACK_FLAG in ex.flags:
                continue  # the monitors watch the primary model's answers only
            drift = self._region(policy)
            if drift is not None:
                work.setdefault(policy.region, (drift, []))[1].append(ex)
        return self._observe(list(work.items())) if work else None

    def _region(self, policy: CompiledPolicy) -> RegionDrift | None:
        spec = policy.policy.drift
        if spec is None:
            return None
        current = self.drift.get(policy.region)
        if current is None or current.key != (spec, policy.policy.model):
            current = self.drift[policy.region] = RegionDrift(policy.policy, self.clock)
        return current

    async def _observe(self, work: list[tuple[str, tuple[RegionDrift, list[Exchange]]]]) -> None:
        for region, (drift, exchanges) in work:
            began = time.perf_counter()
            self._busy.add(region)
            try:
                if self.threaded:
                    results = await asyncio.to_thread(drift.observe, exchanges)
                else:
                    results = drift.observe(exchanges)
            finally:
                self._busy.discard(region)
            self.max_compute = max(self.max_compute, time.perf_counter() - began)
            self.publish(region, results)

    def publish(self, region: str, results: Sequence[WindowResult]) -> None:
        """Hand completed drift windows to the region's breakers and to telemetry."""
        for result in results:
            if result.group == "*":
                self._record(region, result)
        for values in rounds(results):
            self._feed(region, values)

    def _record(self, region: str, result: WindowResult) -> None:
        self.window_counts[region] = self.window_counts.get(region, 0) + 1
        self.alarm_counts[region] = self.alarm_counts.get(region, 0) + result.drift_detected
        if self.telemetry is not None:
            for test, value in result.values.items():
                self.telemetry.record_drift(region, result.signal, test, value)
        if result.drift_detected:
            alarms = ", ".join(k for k, v in result.alarms.items() if v)
            log.info("drift %s/%s alarm (%s): %s", region, result.signal, alarms, result.values)

    def _feed(self, region: str, values: dict[str, float]) -> None:
        self.windows[region] = {**self.windows.get(region, {}), **values}
        for breaker in self.board.breakers_of(region):  # a region-level signal: every route
            breaker.observe_window(values)

    def tick(self) -> None:
        """Close due time-based drift windows and completed fairness windows (board ticker)."""
        timed = [
            (region, (drift, list[Exchange]()))
            for region, drift in self.drift.items()
            if drift.bank.spec.window_seconds is not None and region not in self._busy
        ]
        if timed:  # the window closes off the loop, as in consume
            task = asyncio.get_running_loop().create_task(self._observe(timed))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.fairness is not None:
            self._poll_fairness()

    def _poll_fairness(self) -> None:
        assert self.fairness is not None
        for region, entry in self.board.policies.current.regions.items():
            if entry.policy.fairness is None:
                self.fairness_windows.pop(region, None)
                continue
            windows = self.fairness_windows.get(region)
            if windows is None or windows.window != entry.policy.fairness.window:
                windows = self.fairness_windows[region] = FairnessWindows(entry.policy)
            for values in windows.update(self.fairness.report(region)):
                self._feed(region, values)

    def status(self) -> dict[str, Any]:
        """Per region: windows seen, alarmed windows, last values, warm-up progress."""
        regions = sorted({*self.drift, *self.windows})
        return {
            "max_compute_ms": round(self.max_compute * 1000, 3),
            "regions": {
                r: {
                    "windows": self.window_counts.get(r, 0),
                    "alarmed_windows": self.alarm_counts.get(r, 0),
                    "last": self.windows.get(r, {}),
                    "warming": self.drift[r].warming() if r in self.drift else {},
                }
                for r in regions
            },
        }
