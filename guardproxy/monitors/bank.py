"""The drift monitors of one region: per group and signal, references from warm-up."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from guardproxy.monitors.drift import (
    Clock,
    DriftMonitor,
    Kind,
    Reference,
    WindowResult,
    to_category,
    to_float,
)
from guardproxy.policy.models import DriftSpec


def signal_kinds(spec: DriftSpec) -> dict[str, Kind]:
    """The monitored signals of a drift spec: "score" and each input, with their kind."""
    kinds: dict[str, Kind] = {}
    for signal in spec.signals:
        if isinstance(signal, str):
            kinds[signal] = "numeric"
        else:
            kinds[signal.input] = signal.kind
    return kinds


class DriftBank:
    """All drift monitors of one region: per (group or "*", signal), references from warm-up."""

    def __init__(
        self,
        spec: DriftSpec,
        region: str = "default",
        group_key: str | None = None,
        baseline: Mapping[str, Any] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.spec, self.region, self.group_key = spec, region, group_key
        self.baseline, self.clock = baseline, clock
        self.kinds = signal_kinds(spec)
        self.monitors: dict[tuple[str, str], DriftMonitor] = {}
        self.warmup: dict[tuple[str, str], list[object]] = {}

    def observe(self, rows: Sequence[Mapping[str, object]]) -> list[WindowResult]:
        """Feed rows ({signal: value, ...}); return the windows they completed."""
        batches: dict[tuple[str, str], list[object]] = {}
        for row in rows:
            for group in self._groups(row):
                for signal in self.kinds:
                    batches.setdefault((group, signal), []).append(row.get(signal))
        return self._feed_all(batches)

    def observe_columns(self, columns: Mapping[str, list[object]], rows: int) -> list[WindowResult]:
        """Feed `rows` rows given as one list per signal (absent: None), all of group "*".

        The same windows as `observe` with those rows, without a dict per row; only for a
        bank that keeps no groups apart.
        """
        if self.group_key is not None:
            raise ValueError("a bank keyed by group is fed rows")
        batches: dict[tuple[str, str], list[object]] = {}
        if rows:
            for signal in self.kinds:
                values = columns.get(signal)
                batches[("*", signal)] = [None] * rows if values is None else values
        return self._feed_all(batches)

    def due(self, rows: int) -> bool:
        """Whether `rows` more rows of group "*" may close a window or complete a reference.

        Those are the costly steps (the tests, the reference's quantiles); feeding is not.
        """
        for signal in self.kinds:
            key = ("*", signal)
            monitor = self.monitors.get(key)
            if monitor is None:
                if len(self.warmup.get(key, ())) + rows >= self.spec.reference.warmup:
                    return True
            elif monitor.due(rows):
                return True
        return False

    def _feed_all(self, batches: dict[tuple[str, str], list[object]]) -> list[WindowResult]:
        results: list[WindowResult] = []
        for key, values in batches.items():
            results.extend(self._feed(key, values))
        for key, monitor in self.monitors.items():
            if key not in batches:
                results.extend(monitor.tick())
        return results

    def _groups(self, row: Mapping[str, object]) -> tuple[str, ...]:
        if self.group_key is None or row.get(self.group_key) is None:
            return ("*",)
        return ("*", str(row[self.group_key]))

    def _feed(self, key: tuple[str, str], values: list[object]) -> list[WindowResult]:
        monitor = self.monitors.get(key) or self._from_baseline(key)
        if monitor is not None:
            return monitor.update_many(values)
        buffer = self.warmup.setdefault(key, [])
        kind = self.kinds[key[1]]
        convert = to_float if kind == "numeric" else to_category
        taken = 0
        for value in values:
            taken += 1
            if convert(value) is not None:
                buffer.append(value)
                if len(buffer) >= self.spec.reference.warmup:
                    break
        if len(buffer) < self.spec.reference.warmup:
            return []
        del self.warmup[key]
        reference = Reference.from_values(key[1], kind, buffer, self.spec.bins)
        return self._install(key, reference).update_many(values[taken:])

    def _from_baseline(self, key: tuple[str, str]) -> DriftMonitor | None:
        if self.baseline is None:
            return None
        group, signal = key
        if signal not in self.baseline.get("groups", {}).get(group, {}):
            return None
        return self._install(key, Reference.from_baseline(self.baseline, signal, group))

    def _install(self, key: tuple[str, str], reference: Reference) -> DriftMonitor:
        monitor = DriftMonitor(
            reference,
            self.spec.tests,
            self.spec.window,
            self.spec.window_seconds,
            family_size=len(self.kinds),
            correction=self.spec.correction,
            group=key[0],
            region=self.region,
            clock=self.clock,
        )
        self.monitors[key] = monitor
        return monitor
