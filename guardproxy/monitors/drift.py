"""Drift monitors: a reference distribution per signal, windows compared against it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from guardproxy.monitors import stats
from guardproxy.policy.baselines import entry_problem
from guardproxy.policy.models import DriftTests

Kind = Literal["numeric", "categorical"]
Clock = Callable[[], float]
OTHER = "__other__"
MAX_SAMPLE = 5000
MAX_CATEGORIES = 100
MIN_KEPT = 5  # times a category is seen to be kept apart, past MAX_CATEGORIES
EXACT_KS_BUDGET = 10_000  # n_ref * n_window above which the KS p-value is asymptotic (cost O(n*m))


_NUMBERS = (int, float, np.number)  # a tuple: `int | float | ...` builds a union per call


def to_float(value: object) -> float | None:
    """A finite float from a numeric value, else None (bools and strings are not numbers)."""
    if type(value) is float:  # scores and most features: no other check needed
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, _NUMBERS):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def to_category(value: object) -> str | None:
    """A category label from a value, None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def bounded_sample(sorted_values: NDArray[np.float64], size: int = MAX_SAMPLE) -> list[float]:
    """An evenly strided subsample of sorted values: same quantiles, bounded size."""
    if sorted_values.size <= size:
        return [float(v) for v in sorted_values]
    idx = np.linspace(0, sorted_values.size - 1, size).round().astype(np.int64)
    return [float(v) for v in sorted_values[idx]]


def _split_categories(labels: Sequence[str]) -> tuple[tuple[str, ...], Sequence[str]]:
    """The categories a reference keeps apart from "other", and the values it counts.

    Past MAX_CATEGORIES, the most frequent are chosen on a random half of the values and
    counted on the other: ranked on the values they are counted on, the chosen ones carry
    their luck (1,000 values of 1,000 equally likely categories made every window of the same
    traffic drift). The halves are drawn (seeded, so a baseline is reproducible), not taken
    alternately, as rows may come in pairs. A category seen fewer than MIN_KEPT times is left
    in "other": sparse cells are noise.
    """
    distinct = set(labels)
    if len(distinct) <= MAX_CATEGORIES:
        return tuple(sorted(distinct)), labels  # all kept: none chosen, every value counts
    chooser = np.random.default_rng(len(labels)).random(len(labels)) < 0.5
    seen: dict[str, int] = {}
    counted: list[str] = []
    for label, choose in zip(labels, chooser.tolist(), strict=True):
        if choose:
            seen[label] = seen.get(label, 0) + 1
        else:
            counted.append(label)
    ranked = sorted(seen, key=lambda c: (-seen[c], c))[:MAX_CATEGORIES]
    return tuple(sorted(c for c in ranked if seen[c] >= MIN_KEPT)), counted


@dataclass(frozen=True)
class Reference:
    """The reference distribution of one signal: histogram plus, for numbers, a raw sample."""

    signal: str
    kind: Kind
    counts: tuple[float, ...]
    edges: tuple[float, ...] = ()  # numeric interior edges; the end bins are open
    categories: tuple[str, ...] = ()  # categorical; counts has one more entry: "other"
    sample: tuple[float, ...] = ()

    @classmethod
    def from_values(
        cls, signal: str, kind: Kind, values: Sequence[object], bins: int = 10
    ) -> Reference:
        """Build a reference from observed values (invalid ones are skipped)."""
        if kind == "numeric":
            return cls._numeric(signal, values, bins)
        return cls._categorical(signal, values)

    @classmethod
    def _numeric(cls, signal: str, values: Sequence[object], bins: int) -> Reference:
        arr = np.sort(np.array([v for v in map(to_float, values) if v is not None]))
        if arr.size == 0:
            raise ValueError(f"no numeric reference values for signal {signal!r}")
        # Edges on observed values ("higher") keep tied values apart from their neighbours.
        quantiles = np.linspace(0, 1, bins + 1)[1:-1]
        edges = np.unique(np.quantile(arr, quantiles, method="higher"))
        counts = np.bincount(np.searchsorted(edges, arr, side="right"), minlength=edges.size + 1)
        return cls(
            signal,
            "numeric",
            tuple(map(float, counts)),
            tuple(map(float, edges)),
            sample=tuple(bounded_sample(arr)),
        )

    @classmethod
    def _categorical(cls, signal: str, values: Sequence[object]) -> Reference:
        labels = [label for label in map(to_category, values) if label is not None]
        if not labels:
            raise ValueError(f"no categorical reference values for signal {signal!r}")
        kept, counted = _split_categories(labels)
        index = {c: i for i, c in enumerate(kept)}
        counts = [0.0] * (len(kept) + 1)
        for label in counted:
            counts[index.get(label, len(kept))] += 1
        return cls(signal, "categorical", tuple(counts), categories=kept)

    @classmethod
    def from_baseline(cls, doc: Mapping[str, Any], signal: str, group: str = "*") -> Reference:
        """The reference for (signal, group) from a baseline document."""
        try:
            entry = doc["groups"][group][signal]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"baseline has no signal {signal!r} for group {group!r}") from exc
        broken = entry_problem(entry) if isinstance(entry, Mapping) else "not an object"
        if broken is not None:
            raise ValueError(f"baseline signal {signal!r} of group {group!r}: {broken}")
        return cls(
            signal,
            entry["kind"],
            tuple(map(float, entry["counts"])),
            tuple(map(float, entry.get("edges", ()))),
            tuple(map(str, entry.get("categories", ()))),
            tuple(map(float, entry.get("sample", ()))),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, as stored in a baseline document."""
        if self.kind == "numeric":
            return {
                "kind": self.kind,
                "edges": list(self.edges),
                "counts": list(self.counts),
                "sample": list(self.sample),
            }
        return {"kind": self.kind, "categories": list(self.categories), "counts": list(self.counts)}

    @cached_property
    def edge_array(self) -> NDArray[np.float64]:
        """The edges as an array, made once: every window is binned with them."""
        return np.asarray(self.edges, dtype=np.float64)

    @cached_property
    def sample_array(self) -> NDArray[np.float64]:
        """The sample as a sorted array, made once: every window's KS test reads it."""
        return np.sort(np.asarray(self.sample, dtype=np.float64))

    def histogram(self, values: Sequence[Any] | NDArray[Any]) -> NDArray[np.float64]:
        """Counts of already-validated values in the reference's bins."""
        if self.kind == "numeric":
            numbers = np.asarray(values, dtype=np.float64)
            idx = np.searchsorted(self.edge_array, numbers, "right")
            return np.bincount(idx, minlength=len(self.counts)).astype(np.float64)
        index = {c: i for i, c in enumerate(self.categories)}
        other = len(self.categories)
        idx = np.fromiter((index.get(v, other) for v in values), np.int64, len(values))
        return np.bincount(idx, minlength=other + 1).astype(np.float64)


@dataclass(frozen=True)
class WindowResult:
    """The tests computed on one completed window of one signal."""

    signal: str
    group: str
    n: int
    invalid: int
    values: Mapping[str, float]
    alarms: Mapping[str, bool]
    warn: bool = False
    at: float = 0.0
    region: str = ""

    @property
    def drift_detected(self) -> bool:
        """Whether any test alarmed."""
        return any(self.alarms.values())

    def monitor_values(self) -> dict[str, float]:
        """Values named as breaker rules name them (ks and chi2 are p-values)."""
        names = {"psi": "psi", "js": "js", "ks_p": "ks", "chi2_p": "chi2"}
        prefix = f"drift.{self.signal}."
        return {prefix + names[k]: v for k, v in self.values.items() if k in names}


@dataclass
class DriftMonitor:
    """Compares count- or time-based windows of one signal against its reference.

    >>> ref = Reference.from_values("score", "numeric", [i / 100 for i in range(100)], bins=4)
    >>> monitor = DriftMonitor(ref, window=50)
    >>> monitor.update_many([0.9 + i / 1000 for i in range(50)])[0].alarms["psi"]
    True
    >>> monitor.drift_detected
    True
    """

    reference: Reference
    tests: DriftTests = field(default_factory=DriftTests)
    window: int = 1000
    window_seconds: float | None = None
    family_size: int = 1
    correction: Literal["bonferroni", "none"] = "bonferroni"
    group: str = "*"
    region: str = ""
    clock: Clock = time.monotonic
    invalid: int = 0
    _buffer: list[Any] = field(default_factory=list, repr=False)
    _window_invalid: int = field(default=0, repr=False)
    _started: float | None = field(default=None, repr=False)
    _last: WindowResult | None = field(default=None, repr=False)

    @property
    def drift_detected(self) -> bool:
        """Whether the last completed window alarmed."""
        return self._last is not None and self._last.drift_detected

    @property
    def last(self) -> WindowResult | None:
        """The last completed window, if any."""
        return self._last

    def due(self, count: int) -> bool:
        """Whether `count` more values may close a window: the step that computes the tests."""
        if self.window_seconds is not None:
            return self._started is not None and self.clock() - self._started >= self.window_seconds
        return len(self._buffer) + count >= self.window

    def update_many(self, values: Sequence[object] | NDArray[Any]) -> list[WindowResult]:
        """Add observations; return the windows they completed (invalid values are counted)."""
        results = self.tick()
        if self._started is None:
            self._started = self.clock()
        convert = to_float if self.reference.kind == "numeric" else to_category
        for value in values:
            item = convert(value)
            if item is None:
                self.invalid += 1
                self._window_invalid += 1
                continue
            self._buffer.append(item)
            if self.window_seconds is None and len(self._buffer) >= self.window:
                results.append(self._close())
        return results

    def tick(self) -> list[WindowResult]:
        """Close a time-based window that is due (nothing for count-based windows)."""
        if self.window_seconds is None or self._started is None:
            return []
        if self.clock() - self._started < self.window_seconds:
            return []
        self._started = self.clock()
        return [self._close()] if self._buffer else []

    def _close(self) -> WindowResult:
        window, self._buffer = self._buffer, []
        invalid, self._window_invalid = self._window_invalid, 0
        values = self._compute(window)
        self._last = WindowResult(
            self.reference.signal,
            self.group,
            len(window),
            invalid,
            values,
            self._alarms(values),
            self._warn(values),
            self.clock(),
            self.region,
        )
        return self._last

    def _compute(self, window: list[Any]) -> dict[str, float]:
        ref = np.asarray(self.reference.counts)
        numbers = np.asarray(window, dtype=np.float64) if self.reference.kind == "numeric" else None
        cur = self.reference.histogram(window if numbers is None else numbers)  # converted once
        out: dict[str, float] = {}
        if self.tests.psi is not None:
            out["psi"] = stats.psi(ref, cur)
        if self.tests.js is not None:
            out["js"] = stats.js_distance(ref, cur)
        if numbers is not None and self.tests.ks is not None:
            out["ks"], out["ks_p"] = self._ks(numbers, ref, cur)
        if self.reference.kind == "categorical" and self.tests.chi2 is not None:
            out["chi2"], out["chi2_p"], _ = stats.chi2_test(ref, cur)
        return out

    def _ks(
        self, window: NDArray[np.float64], ref: NDArray[Any], cur: NDArray[Any]
    ) -> tuple[float, float]:
        sample = self.reference.sample_array
        if not sample.size:
            return stats.ks_from_histograms(ref, cur)
        exact = sample.size * window.size <= EXACT_KS_BUDGET
        return stats.ks_2samp(sample, window, method="auto" if exact else "asymp")

    def _alpha(self, p_value: float) -> float:
        return p_value / self.family_size if self.correction == "bonferroni" else p_value

    def _alarms(self, values: Mapping[str, float]) -> dict[str, bool]:
        tests, alarms = self.tests, {}
        if tests.psi is not None and "psi" in values:
            alarms["psi"] = values["psi"] >= tests.psi.alarm
        if tests.js is not None and "js" in values:
            alarms["js"] = values["js"] >= tests.js.alarm
        if tests.ks is not None and "ks_p" in values:
            alarms["ks"] = values["ks_p"] < self._alpha(tests.ks.p_value)
        if tests.chi2 is not None and "chi2_p" in values:
            alarms["chi2"] = values["chi2_p"] < self._alpha(tests.chi2.p_value)
        return alarms

    def _warn(self, values: Mapping[str, float]) -> bool:
        return self.tests.psi is not None and values.get("psi", 0.0) >= self.tests.psi.warn
