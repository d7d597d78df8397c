"""FairnessEngine: records decisions, joins labels, reports per-group fairness, recalibrates."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from guardproxy.monitors.calibrate import apply_guard_rails, fit_from_histograms
from guardproxy.monitors.fairness import fairness_report
from guardproxy.monitors.histograms import ScoreHistogram
from guardproxy.monitors.records import (
    DecisionDeltas,
    LabelBins,
    LabelCells,
    Layout,
    decision_records,
    histogram_layout,
    label_deltas,
    labeled,
)
from guardproxy.monitors.tables import (
    Calibration,
    current_threshold,
    history_entry,
    next_version,
    with_region,
)
from guardproxy.monitors.worker import Item
from guardproxy.policy.models import AdaptSpec, Policy
from guardproxy.policy.table import PolicyTable
from guardproxy.policy.thresholds import Snapshot, ThresholdRule, ThresholdTable
from guardproxy.state.base import (
    GroupState,
    Joined,
    PredictionRecord,
    StateBackend,
    StateError,
    hash_fields,
)
from guardproxy.tasks import cancel_and_wait

log = logging.getLogger("guardproxy.monitors")

T = TypeVar("T")
RATES = ("selection_rate", "true_positive_rate", "false_positive_rate", "positive_predictive_value")
DISPARITIES = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equal_opportunity_difference",
    "equalized_odds_difference",
)


class FairnessEngine:
    """The first monitor consumer; the state backend holds everything that must be shared."""

    def __init__(
        self,
        state: StateBackend,
        policies: Snapshot[PolicyTable],
        thresholds: Snapshot[ThresholdTable],
        history: int = 20,
        tick: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state, self.policies, self.thresholds = state, policies, thresholds
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self.tick, self.clock = tick, clock
        self.recorded = self.labels_joined = self.state_errors = 0
        self.last_error: str | None = None
        self.calibrations: dict[str, Calibration] = {}
        self.label_listeners: list[Callable[[Sequence[tuple[PredictionRecord, int]]], None]] = []
        self._cache: dict[str, dict[str, GroupState]] = {}
        self._due: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def _guarded(self, action: Awaitable[T]) -> T | None:
        """Await a state call; a failure is counted and logged once per outage."""
        try:
            result = await action
        except StateError as exc:
            if self.last_error is None:
                log.warning("state backend failing: %s", exc)
            self.state_errors += 1
            self.last_error = str(exc)
            return None
        if self.last_error is not None:
            log.info("state backend recovered")
            self.last_error = None
        return result

    def consume(self, batch: list[Item]) -> Awaitable[None] | None:
        """Turn a batch's verdicts into records and decision counts; returns the writes."""
        records, deltas = decision_records(batch, self.clock(), self.thresholds.current.version)
        return self._write(records, deltas) if records else None

    async def _write(self, records: list[PredictionRecord], deltas: DecisionDeltas) -> None:
        await self._guarded(self._write_all(records, deltas))

    async def _write_all(self, records: list[PredictionRecord], deltas: DecisionDeltas) -> None:
        await self.state.record_predictions(records)
        for (region, group), (n, selected) in deltas.items():
            await self.state.add_counts(region, group, {"decisions": n, "selected": selected})
        self.recorded += len(records)

    async def join(self, items: Sequence[tuple[str, int, float]]) -> list[Joined]:
        """Join labels to their records and count the joined ones (StateError if unreachable)."""
        try:
            results = await self.state.join_labels(items)
        except StateError:
            self.state_errors += 1
            raise
        pairs = [(r.record, item[1]) for r, item in zip(results, items, strict=True) if r.record]
        await self.on_labels(pairs)
        return results

    async def on_label(self, record: PredictionRecord, label: int) -> None:
        """Count one labeled decision (confusion cell at the decision made, score histogram)."""
        await self.on_labels([(record, label)])

    async def on_labels(self, pairs: Sequence[tuple[PredictionRecord, int]]) -> None:
        """Count labeled decisions, aggregated per (region, group) before they are written."""
        cells, bins = label_deltas(pairs, self._layout)
        await self._guarded(self._write_labels(cells, bins))
        self.labels_joined += len(pairs)
        for listener in self.label_listeners:
            listener(pairs)

    async def _write_labels(self, cells: LabelCells, bins: LabelBins) -> None:
        for (region, group), counts in cells.items():
            deltas = counts.to_dict()
            del deltas["decisions"], deltas["selected"]  # counted when the decision was made
            await self.state.add_counts(region, group, deltas)
        for (region, group, label), split in bins.items():
            await self.state.add_histogram(region, group, label, split)

    def _layout(self, region: str) -> Layout:
        return histogram_layout(self.policies.current.resolve(region)[0].policy)

    async def refresh(self) -> None:
        """Re-read every region's counters (the fleet's, with Redis) for reports."""
        stored = await self._guarded(self.state.regions()) or []
        for region in sorted({*self.policies.current.regions, *stored}):
            groups = await self._guarded(self.state.counts(region))
            if groups is not None:
                self._cache[region] = groups

    def report(self, region: str) -> dict[str, Any]:
        """The region's fairness report (Fairlearn names, Wilson 95% intervals) as last read."""
        groups = self._cache.get(region, {})
        report = fairness_report({g: s.counts for g, s in sorted(groups.items())})
        report["thresholds"] = self._thresholds_of(region, groups)
        return report

    def _thresholds_of(self, region: str, groups: Mapping[str, GroupState]) -> dict[str, float]:
        entry = self.policies.current.resolve(region)[0]
        table = self.thresholds.current
        names = {*entry.policy.groups.values, *groups}
        return {g: current_threshold(entry.policy, table, region, g) for g in sorted(names)}

    def gauges(self) -> dict[str, dict[str, Any]]:
        """Per region: rates and counts per group, and the disparities, for telemetry gauges."""
        out: dict[str, dict[str, Any]] = {}
        for region in sorted(self._cache):
            report = self.report(region)
            groups = {
                g: {
                    **{name: m[name]["value"] for name in RATES if m[name]["value"] is not None},
                    "decisions": m["decisions"],
                    "labeled": m["labeled"],
                    "threshold": report["thresholds"].get(g),
                }
                for g, m in report["groups"].items()
            }
            disparities = {k: report[k] for k in DISPARITIES if report[k] is not None}
            out[region] = {"groups": groups, "disparities": disparities}
        return out

    async def calibrate(self, region: str, reason: str = "scheduled") -> Calibration:
        """Fit the region's thresholds from its labeled histograms; publish them if they moved."""
        entry, _ = self.policies.current.resolve(region)
        adapt = entry.policy.decision.adapt
        if adapt is None:
            return self._done(entry.region, "skipped", "no decision.adapt in the policy")
        groups = await self._guarded(self.state.counts(entry.region))
        if groups is None:
            return self._done(entry.region, "failed", f"state backend: {self.last_error}")
        self._cache[entry.region] = groups
        return await self._fit(entry.policy, adapt, groups, reason)

    async def _fit(
        self, policy: Policy, adapt: AdaptSpec, groups: Mapping[str, GroupState], reason: str
    ) -> Calibration:
        region, table = policy.region, self.thresholds.current
        names = sorted(policy.groups.values or groups)
        labels = {g: labeled(groups[g].counts) if g in groups else 0 for g in names}
        ready = [g for g in names if labels[g] >= adapt.min_labels_per_group]
        if not ready:
            waiting = ", ".join(f"{g} {labels[g]}/{adapt.min_labels_per_group}" for g in names)
            return self._done(region, "waiting", f"labels: {waiting}")
        layout = histogram_layout(policy)
        hists = {g: ScoreHistogram.from_dict(hash_fields(groups[g].bins), *layout) for g in ready}
        fit = fit_from_histograms(
            hists, adapt.constraint, adapt.objective, adapt.cost, adapt.tolerance
        )
        current = {g: current_threshold(policy, table, region, g) for g in names}
        railed = apply_guard_rails(
            current, fit, labels, adapt.min_labels_per_group, adapt.max_step, adapt.pinned
        )
        learned = {g for g in names if table.rule(region, g) is not None} | set(ready)
        rules = {g: ThresholdRule(*railed[g]) for g in sorted(learned - set(adapt.pinned))}
        return await self._publish(region, rules, f"{reason}: fit {adapt.constraint}")

    async def _publish(self, region: str, rules: dict[str, ThresholdRule], why: str) -> Calibration:
        table = self.thresholds.current
        merged = with_region(table, region, rules)
        if merged == dict(table.rules):
            return self._done(region, "unchanged", why)
        new = ThresholdTable(next_version(table.version, merged), MappingProxyType(merged))
        self.thresholds.publish(new)
        self.history.append(history_entry(new, region, why, self.clock()))
        await self._guarded(self.state.save_thresholds(new))
        return self._done(region, "published", why)

    def _done(self, region: str, status: str, reason: str) -> Calibration:
        result = Calibration(region, status, reason, self.thresholds.current.version, self.clock())
        self.calibrations[region] = result
        return result

    async def start(self) -> None:
        """Restore persisted thresholds, read the counters, start the calibration loop."""
        table = await self._guarded(self.state.load_thresholds())
        if table is not None:
            self.thresholds.publish(table)
            self.history.append(history_entry(table, "*", "restored", self.clock()))
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="guardproxy-fairness")

    async def stop(self) -> None:
        """Stop the calibration loop."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self.run_due()
            except Exception:
                log.exception("fairness calibration failed")

    async def run_due(self) -> None:
        """Refresh the reports and calibrate every region whose `adapt.every` has passed."""
        await self.refresh()
        now = self.clock()
        for region, entry in self.policies.current.regions.items():
            adapt = entry.policy.decision.adapt
            if adapt is None:
                continue
            if now >= self._due.setdefault(region, now + adapt.every):
                self._due[region] = now + adapt.every
                await self.calibrate(region)

    def status(self) -> dict[str, Any]:
        """Counters, per-region reports, calibration outcomes and threshold history."""
        regions = sorted({*self._cache, *self.calibrations})
        return {
            "state": {
                "backend": self.state.name,
                "state_errors": self.state_errors,
                "last_error": self.last_error,
            },
            "recorded": self.recorded,
            "labels_joined": self.labels_joined,
            "thresholds": {
                "version": self.thresholds.current.version,
                "history": list(self.history),
            },
            "regions": {r: self._region_status(r) for r in regions},
        }

    def _region_status(self, region: str) -> dict[str, Any]:
        calibration = self.calibrations.get(region)
        return {
            "fairness": self.report(region),
            "calibration": None if calibration is None else calibration.to_dict(),
        }
