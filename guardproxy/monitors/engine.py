"""FairnessEngine: records decisions, joins labels, reports per-group fairness, recalibrates."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from guardproxy.hotpath.observation import Observation
from guardproxy.monitors.calibrate import apply_guard_rails, fit_from_histograms
from guardproxy.monitors.fairness import fairness_report
from guardproxy.monitors.histograms import ScoreHistogram
from guardproxy.monitors.recorder import DecisionRecorder
from guardproxy.monitors.records import (
    Layout,
    decision_records,
    histogram_layout,
    label_tally,
)
from guardproxy.monitors.shared import SharedTable
from guardproxy.monitors.tables import Calibration, current_threshold, next_version, with_model
from guardproxy.policy.models import AdaptSpec, ModelPolicy
from guardproxy.policy.table import PolicyTable
from guardproxy.policy.thresholds import ModelKey, Snapshot, ThresholdRule, ThresholdTable
from guardproxy.state.base import (
    GroupState,
    Joined,
    PredictionRecord,
    StateBackend,
    StateError,
    Tally,
    key_text,
)
from guardproxy.state.counts import GroupCounts
from guardproxy.tasks import cancel_and_wait, raise_if_cancelled

log = logging.getLogger("guardproxy.monitors")

T = TypeVar("T")
RATES = ("selection_rate", "true_positive_rate", "false_positive_rate", "positive_predictive_value")
DISPARITIES = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equal_opportunity_difference",
    "equalized_odds_difference",
)
LabelListener = Callable[[Sequence[tuple[PredictionRecord, int]]], None]


class FairnessEngine:
    """The first monitor consumer; the state backend holds everything that must be shared.

    Everything is kept per model version: (region, model, version) and group.
    """

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
        self.labels_joined = self.state_errors = 0
        self.last_error: str | None = None
        self.calibrations: dict[ModelKey, Calibration] = {}
        self.label_listeners: list[LabelListener] = []
        self._cache: dict[ModelKey, dict[str, GroupState]] = {}
        self._due: dict[ModelKey, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.recorder = DecisionRecorder(state, self._guarded)
        self.table = SharedTable(state, thresholds, self.history, lambda: self.clock())
        self.table.on_adopt = self._calibrated_elsewhere

    @property
    def recorded(self) -> int:
        """Decided rows whose records were written."""
        return self.recorder.recorded

    @property
    def reused_ids(self) -> int:
        """Records that came under an id already recorded."""
        return self.recorder.reused_ids

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

    def spec(self, key: ModelKey) -> ModelPolicy | None:
        """The current policy of a model key's model, if it is still declared."""
        entry = self.policies.current.regions.get(key[0])
        model = entry.model(key[1]) if entry is not None else None
        return model.spec if model is not None else None

    def consume(self, batch: list[Observation]) -> None:
        """Turn a batch's verdicts into records and decision counts, written in the background."""
        records, deltas = decision_records(batch, self.clock())
        if records:
            self.recorder.offer(records, deltas)

    async def flush(self) -> None:
        """Return once the records of every batch consumed so far are written (or failed)."""
        await self.recorder.flush()

    async def join(self, items: Sequence[tuple[str, int, float]]) -> list[Joined]:
        """Join labels to their records, each counted as it joins (StateError if unreachable)."""
        try:
            results = await self.state.join_labels(items, self._tally)
        except StateError:
            self.state_errors += 1
            raise
        pairs = [(r.record, item[1]) for r, item in zip(results, items, strict=True) if r.record]
        self.labels_joined += len(pairs)
        for listener in self.label_listeners:
            listener(pairs)
        return results

    def _tally(self, record: PredictionRecord, label: int) -> Tally:
        return label_tally(record, label, self._layout(record.key))

    def _layout(self, key: ModelKey) -> Layout:
        spec = self.spec(key)
        return histogram_layout(spec) if spec is not None else (100, 0.0, 1.0)

    async def refresh(self) -> None:
        """Re-read every model version's counters (the fleet's, with Redis) for reports."""
        for key in await self._guarded(self.state.keys()) or []:
            groups = await self._guarded(self.state.counts(key))
            if groups is not None:
                self._cache[key] = groups

    def model_keys(self) -> list[ModelKey]:
        """Model versions with counters, as last read."""
        return sorted(self._cache)

    def counts(self, key: ModelKey) -> dict[str, GroupCounts]:
        """A model version's counters per group, as last read."""
        return {g: s.counts for g, s in self._cache.get(key, {}).items()}

    def report(self, key: ModelKey) -> dict[str, Any]:
        """A model version's fairness report (Fairlearn names, 95% intervals, its bounds)."""
        spec = self.spec(key)
        groups = self._cache.get(key, {})
        counts = {g: s.counts for g, s in sorted(groups.items())}
        report = fairness_report(counts, spec.fairness if spec is not None else None)
        report["thresholds"] = self._thresholds_of(key, spec, groups)
        return report

    def _thresholds_of(
        self, key: ModelKey, spec: ModelPolicy | None, groups: Mapping[str, GroupState]
    ) -> dict[str, float]:
        if spec is None:
            return {}
        table = self.thresholds.current
        names = {*spec.groups.values, *groups}
        return {g: current_threshold(spec, table, key, g) for g in sorted(names)}

    def gauges(self) -> dict[ModelKey, dict[str, Any]]:
        """Per model version: rates and counts per group, and the disparities, for gauges."""
        return dict(self.each_gauge())

    def each_gauge(self) -> Iterator[tuple[ModelKey, dict[str, Any]]]:
        """`gauges()` one model version at a time: a reader may yield the loop between them."""
        for key in sorted(self._cache):
            report = self.report(key)
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
            yield key, {"groups": groups, "disparities": disparities}

    async def calibrate(self, key: ModelKey, reason: str = "scheduled") -> Calibration:
        """Fit a model version's thresholds from its labeled histograms; publish if they moved."""
        spec = self.spec(key)
        adapt = spec.decision.adapt if spec is not None else None
        if spec is None or adapt is None:
            return self._done(key, "skipped", "no decision.adapt in the model's policy")
        await self.table.sync()  # fit from the fleet's newest table, not this replica's last
        groups = await self._guarded(self.state.counts(key))
        if groups is None:
            return self._done(key, "failed", f"state backend: {self.last_error}")
        self._cache[key] = groups
        return await self._fit(key, spec, adapt, groups, reason)

    async def _fit(
        self,
        key: ModelKey,
        spec: ModelPolicy,
        adapt: AdaptSpec,
        groups: Mapping[str, GroupState],
        reason: str,
    ) -> Calibration:
        table = self.thresholds.current
        names = sorted(spec.groups.values or groups)
        labels = {g: groups[g].counts.labeled() if g in groups else 0 for g in names}
        ready = [g for g in names if labels[g] >= adapt.min_labels_per_group]
        if not ready:
            waiting = ", ".join(f"{g} {labels[g]}/{adapt.min_labels_per_group}" for g in names)
            return self._done(key, "waiting", f"labels: {waiting}")
        layout = histogram_layout(spec)
        hists = {g: ScoreHistogram.from_dict(groups[g].bins, *layout) for g in ready}
        fit = fit_from_histograms(
            hists, adapt.constraint, adapt.objective, adapt.cost, adapt.tolerance
        )
        current = {g: current_threshold(spec, table, key, g) for g in names}
        railed = apply_guard_rails(
            current, fit, labels, adapt.min_labels_per_group, adapt.max_step, adapt.pinned
        )
        learned = {g for g in names if table.rule(key, g) is not None} | set(ready)
        rules = {g: ThresholdRule(*railed[g]) for g in sorted(learned - set(adapt.pinned))}
        return await self._publish(key, rules, f"{reason}: fit {adapt.constraint}")

    async def _publish(
        self, key: ModelKey, rules: dict[str, ThresholdRule], why: str
    ) -> Calibration:
        table = self.thresholds.current
        merged = with_model(table, key, rules)
        if merged == dict(table.rules):
            return self._done(key, "unchanged", why)
        new = ThresholdTable(next_version(table.version, merged), MappingProxyType(merged))
        status = await self.table.save(new, key_text(key), why)
        if status == "refused":
            why = f"{why}; another replica stored a newer table first, which serves"
        elif status == "failed":
            why = f"{why}; not stored, so not published: {self.table.last_error}"
        return self._done(key, status, why)

    def _done(self, key: ModelKey, status: str, reason: str) -> Calibration:
        result = Calibration(key, status, reason, self.thresholds.current.version, self.clock())
        self.calibrations[key] = result
        return result

    async def start(self) -> None:
        """Serve the stored thresholds, read the counters, start the calibration loop."""
        await self.table.sync("restored")
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="guardproxy-fairness")

    async def stop(self) -> None:
        """Stop the calibration loop; write what waits, unless the backend is failing."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self.last_error is not None:  # each piece would only wait out its timeout
            self.recorder.drop_pending()
        await self.recorder.flush()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self.run_due()
            except Exception:
                log.exception("fairness calibration failed")
            raise_if_cancelled()

    def _calibrated_elsewhere(self, keys: set[ModelKey]) -> None:
        """Another replica's calibration counts as ours: the fleet fits once per `every`."""
        for key in keys:
            spec = self.spec(key)
            if spec is not None and spec.decision.adapt is not None:
                self._due[key] = self.clock() + spec.decision.adapt.every

    async def run_due(self) -> None:
        """Serve the stored table, refresh the reports, calibrate the models that are due."""
        await self.table.sync()
        await self.refresh()
        now = self.clock()
        for key in sorted(self._cache):
            spec = self.spec(key)
            adapt = spec.decision.adapt if spec is not None else None
            if adapt is None:
                continue
            if now >= self._due.setdefault(key, now + adapt.every):
                self._due[key] = now + adapt.every
                await self.calibrate(key)

    def status(self) -> dict[str, Any]:
        """Counters, per-model reports, calibration outcomes and threshold history."""
        keys = sorted({*self._cache, *self.calibrations})
        return {
            "state": {
                "backend": self.state.name,
                "state_errors": self.state_errors,
                "last_error": self.last_error,
            },
            "recorded": self.recorded,
            "records": self.recorder.status(),
            "reused_ids": self.reused_ids,
            "labels_joined": self.labels_joined,
            "thresholds": self.table.status(),
            "models": {key_text(k): self.model_status(k) for k in keys},
        }

    def model_status(self, key: ModelKey) -> dict[str, Any]:
        """One model version's fairness report and last calibration."""
        calibration = self.calibrations.get(key)
        return {
            "fairness": self.report(key),
            "calibration": None if calibration is None else calibration.to_dict(),
        }
