"""The drift of one model version: its bank of monitors, missing inputs, and probe windows."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from guardproxy.hotpath.observation import Observation, row_count
from guardproxy.monitors import stats
from guardproxy.monitors.bank import DriftBank
from guardproxy.monitors.drift import Clock, Reference, WindowResult, to_category, to_float
from guardproxy.policy.models import ModelPolicy
from guardproxy.policy.thresholds import ModelKey

Row = dict[str, object]
INLINE_ROWS = 256  # rows fed in one step on the event loop at most (~1 µs a value)
# Reference sample times probes above which a probe window's KS p-value is asymptotic. The
# exact one costs ~0.15 µs a pair in Python: 1,000 probes against a 5,000-value sample held
# the event loop 1 s. Up to here (20 probes, 5,000 values) it takes ~20 ms, in a thread.
PROBE_EXACT_BUDGET = 100_000


class ModelDrift:
    """Every drift monitor of one (region, model, version), fed from observations."""

    def __init__(
        self,
        spec: ModelPolicy,
        key: ModelKey,
        clock: Clock,
        baseline: Mapping[str, Any] | None = None,
    ) -> None:
        drift = spec.drift
        if drift is None:
            raise ValueError(f"model {spec.name!r} has no drift section")
        self.key = key
        self.spec = spec
        self.baseline = baseline  # as read with the policy (CompiledModel.baseline)
        self.bank = DriftBank(drift, key[0], None, baseline, clock)
        self.inputs = [s.input for s in spec.signal_specs()]
        self.rows_per_request = -(-drift.window // spec.breaker.min_calls)  # rounded up
        self.scored = "score" in self.bank.kinds
        self.rows_seen = 0
        self.unseen = set(self.inputs)  # watched inputs no row has yet carried a valid value of
        self.probes: list[Row] = []
        # One step at a time, in a thread or not: a time window a tick closes and a batch
        # that finds it due would otherwise feed and close the same monitors at once.
        self.lock = asyncio.Lock()

    def rows(self, ob: Observation) -> list[Row]:
        """One row per verdict: the score and each watched input (None when unreadable)."""
        rows: list[Row] = [{"score": v.score} if self.scored else {} for v in ob.verdicts]
        for name, values in zip(self.inputs, ob.features, strict=False):
            for row, value in zip(rows, values, strict=False):
                row[name] = value
        return rows

    def columns(self, observations: Sequence[Observation]) -> dict[str, list[object]]:
        """Per signal, one value per verdict: the `rows` of every observation, column-wise."""
        columns: dict[str, list[object]] = {}
        if self.scored:
            columns["score"] = [v.score for ob in observations for v in ob.verdicts]
        for i, name in enumerate(self.inputs):
            column: list[object] = []
            for ob in observations:
                n = len(ob.verdicts)
                values = ob.features[i] if i < len(ob.features) else ()
                column.extend(values[:n])
                if len(values) < n:  # a row without the input reads as None
                    column.extend([None] * (n - len(values)))
            columns[name] = column
        return columns

    def observe(self, observations: Sequence[Observation]) -> list[WindowResult]:
        """Feed the observations' rows; the windows they completed (may run in a thread)."""
        rows = row_count(observations)
        columns = self.columns(observations)
        self.rows_seen += rows
        for name in [name for name in self.inputs if name in self.unseen]:
            convert = to_float if self.bank.kinds[name] == "numeric" else to_category
            if any(convert(value) is not None for value in columns[name]):
                self.unseen.discard(name)  # seen once is enough: no more checks per value
        return self.bank.observe_columns(columns, rows)

    def due(self, observations: Sequence[Observation]) -> bool:
        """Whether feeding these observations is costly: many rows, or a window or reference
        they may complete."""
        rows = row_count(observations)
        return rows > INLINE_ROWS or self.bank.due(rows)

    def missing_inputs(self) -> list[str]:
        """Watched inputs no request has carried, once a whole window of rows has passed."""
        if self.rows_seen < self.bank.spec.window:
            return []
        return [name for name in self.inputs if name in self.unseen]

    def add_probes(self, observations: Sequence[Observation], size: int) -> list[Row] | None:
        """Keep half-open probes' rows; once `size` are in, hand them over as the probe window."""
        self.probes.extend(row for ob in observations for row in self.rows(ob))
        if len(self.probes) < size:
            return None
        rows, self.probes = self.probes, []
        return rows

    def probe_window(self, rows: list[Row]) -> dict[str, float]:
        """Drift of the probes' rows against the reference (may run in a thread).

        A probe window is small, so PSI is corrected by its expected value under no drift,
        (bins - 1) * (1/n + 1/m), and KS is exact while that stays cheap.
        """
        values: dict[str, float] = {}
        for (group, signal), monitor in list(self.bank.monitors.items()):
            if group == "*":
                values.update(_window_values(monitor.reference, signal, rows))
        return values

    def warming(self) -> dict[str, int]:
        """Per signal still warming up: how many reference values are in."""
        return {s: len(v) for (g, s), v in self.bank.warmup.items() if g == "*"}

    def last(self) -> dict[str, Any]:
        """Per signal, the last completed window's values, alarms and warning."""
        out: dict[str, Any] = {}
        for (group, signal), monitor in self.bank.monitors.items():
            result = monitor.last
            if group == "*" and result is not None:
                out[signal] = {
                    "values": dict(result.values),
                    "alarms": dict(result.alarms),
                    "warn": result.warn,
                    "n": result.n,
                }
        return out


def _window_values(reference: Reference, signal: str, rows: list[Row]) -> dict[str, float]:
    numbers = [v for v in (to_float(row.get(signal)) for row in rows) if v is not None]
    if reference.kind != "numeric" or not numbers:
        return {}
    ref = list(reference.counts)
    cur = reference.histogram(numbers)
    bias = (len(ref) - 1) * (1 / len(numbers) + 1 / max(sum(ref), 1))
    prefix = f"drift.{signal}."
    out = {prefix + "psi": max(0.0, stats.psi(ref, cur) - bias)}
    if reference.sample:
        sample = reference.sample_array
        method = "auto" if sample.size * len(numbers) <= PROBE_EXACT_BUDGET else "asymp"
        out[prefix + "ks"] = stats.ks_2samp(sample, numbers, method)[1]
    return out
