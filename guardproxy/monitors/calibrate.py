"""Per-group decision thresholds under a fairness constraint, fitted offline or live.

A group's rule is positive iff score >= threshold, where the threshold is `threshold_high`
with probability `p_high` and `threshold` otherwise. The per-constraint search itself is
in guardproxy.monitors.constraints; this module validates input and reports the rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

from guardproxy.monitors.constraints import (
    EXACT,
    Mix,
    fit_mixes,
    gain_weights,
    objective_value,
    own_best,
    selected_totals,
)
from guardproxy.monitors.histograms import Curve, FloatArray, ScoreHistogram, curve_from_scores

Constraint = Literal[
    "none", "per_group", "demographic_parity", "equal_opportunity", "equalized_odds"
]
Objective = Literal["accuracy", "balanced_accuracy", "cost"]


@dataclass(frozen=True, slots=True)
class GroupRule:
    """A group's rule and the rates it achieves on the fitted data."""

    threshold: float
    threshold_high: float | None
    p_high: float
    selection_rate: float | None
    tpr: float | None
    fpr: float | None
    accuracy: float | None
    count: int


@dataclass(frozen=True, slots=True)
class FitResult:
    """Fitted rules per group and the overall objective value."""

    constraint: str
    objective: str
    tolerance: float
    groups: Mapping[str, GroupRule]
    objective_value: float

    def gaps(self) -> dict[str, float | None]:
        """max - min across groups of selection_rate, tpr and fpr."""
        out: dict[str, float | None] = {}
        for name in ("selection_rate", "tpr", "fpr"):
            values = [getattr(r, name) for r in self.groups.values()]
            defined = [v for v in values if v is not None]
            out[name] = float(max(defined) - min(defined)) if defined else None
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view."""
        return {
            "constraint": self.constraint,
            "objective": self.objective,
            "tolerance": self.tolerance,
            "objective_value": self.objective_value,
            "gaps": self.gaps(),
            "groups": {g: asdict(r) for g, r in self.groups.items()},
        }


def _rule(curve: Curve, mix: Mix) -> GroupRule:
    """The rule of a mix and the rates it achieves on the curve."""
    low, high, p = mix
    tp = (1 - p) * curve.pos[low] + p * curve.pos[high]
    fp = (1 - p) * curve.neg[low] + p * curve.neg[high]
    pos, neg = curve.pos_total, curve.neg_total
    mixed = low != high and EXACT < p < 1 - EXACT
    first = low if p < 1 - EXACT else high
    return GroupRule(
        threshold=float(curve.thresholds[first]),
        threshold_high=float(curve.thresholds[high]) if mixed else None,
        p_high=float(p) if mixed else 0.0,
        selection_rate=(tp + fp) / (pos + neg) if pos + neg > 0 else None,
        tpr=tp / pos if pos > 0 else None,
        fpr=fp / neg if neg > 0 else None,
        accuracy=(tp + neg - fp) / (pos + neg) if pos + neg > 0 else None,
        count=curve.count,
    )


def _fit(
    curves: Mapping[str, Curve],
    pooled: Curve,
    constraint: str,
    objective: str,
    cost: tuple[float, ...] | None,
    tolerance: float,
    grid: int | None,
) -> FitResult:
    """Fit rules on per-group curves."""
    _check_options(constraint, objective, cost, tolerance)
    pos, neg = pooled.pos_total, pooled.neg_total
    if pos + neg <= 0:
        raise ValueError("no labeled weight to fit thresholds on")
    ab = gain_weights(objective, cost, pos, neg)
    mixes = fit_mixes(curves, pooled, constraint, ab, tolerance, grid)
    rules = {g: _rule(curves[g], mixes[g]) for g in sorted(curves)}
    if constraint == "none":  # report the common threshold, not each group's equivalent
        common = float(pooled.thresholds[own_best(pooled, *ab)[0]])
        rules = {g: replace(r, threshold=common) for g, r in rules.items()}
    sel = selected_totals(curves, mixes)
    value = objective_value(objective, cost, sel, (pos, neg))
    return FitResult(constraint, objective, tolerance, rules, float(value))


def _check_options(
    constraint: str, objective: str, cost: tuple[float, ...] | None, tolerance: float
) -> None:
    """Reject unknown constraints and objectives, a missing cost, a tolerance off [0, 1]."""
    if constraint not in get_args(Constraint):
        raise ValueError(
            f"unknown constraint {constraint!r} (one of {', '.join(get_args(Constraint))})"
        )
    if objective not in get_args(Objective):
        raise ValueError(
            f"unknown objective {objective!r} (one of {', '.join(get_args(Objective))})"
        )
    if objective == "cost" and (cost is None or len(cost) != 4):
        raise ValueError("objective 'cost' needs cost = (TN, FP, FN, TP)")
    if not 0.0 <= tolerance <= 1.0:
        raise ValueError(f"tolerance must be within [0, 1], got {tolerance}")


def fit_thresholds(
    scores: ArrayLike,
    labels: ArrayLike,
    groups: ArrayLike,
    constraint: str = "equal_opportunity",
    objective: str = "accuracy",
    cost: tuple[float, float, float, float] | None = None,
    weights: ArrayLike | None = None,
    tolerance: float = 0.0,
    grid: int | None = None,
) -> FitResult:
    """Fit per-group rules on raw scores; candidates are the unique scores of each group."""
    s, y, w, g = _as_arrays(scores, labels, groups, weights)
    names, inverse = np.unique(g, return_inverse=True)
    curves = {
        str(n): curve_from_scores(s[inverse == i], y[inverse == i], w[inverse == i])
        for i, n in enumerate(names)
    }
    return _fit(curves, curve_from_scores(s, y, w), constraint, objective, cost, tolerance, grid)


def _as_arrays(
    scores: ArrayLike, labels: ArrayLike, groups: ArrayLike, weights: ArrayLike | None
) -> tuple[FloatArray, FloatArray, FloatArray, Any]:
    """Validated float scores, 0/1 labels, non-negative weights and string groups."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, np.float64)
    g = np.asarray(groups).astype(str)
    w = np.ones_like(s) if weights is None else np.asarray(weights, np.float64)
    if s.ndim != 1 or not s.size or not s.shape == y.shape == g.shape == w.shape:
        raise ValueError(
            "scores, labels, groups (and weights) must be non-empty 1-D arrays of one length"
        )
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite numbers")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError("weights must be finite and non-negative")
    return s, y, w, g


def fit_from_histograms(
    hists: Mapping[str, ScoreHistogram],
    constraint: str = "equal_opportunity",
    objective: str = "accuracy",
    cost: tuple[float, float, float, float] | None = None,
    tolerance: float = 0.0,
    grid: int | None = None,
) -> FitResult:
    """Fit per-group rules on mergeable histograms; thresholds fall on bin edges."""
    if not hists:
        raise ValueError("no histograms to fit thresholds on")
    pooled = None
    for hist in hists.values():
        pooled = hist if pooled is None else pooled.merge(hist)
    assert pooled is not None
    curves = {g: h.curve() for g, h in hists.items()}
    return _fit(curves, pooled.curve(), constraint, objective, cost, tolerance, grid)


def apply_guard_rails(
    current: Mapping[str, float],
    proposed: FitResult,
    label_counts: Mapping[str, int],
    min_labels: int,
    max_step: float,
    pinned: Iterable[str] = (),
) -> dict[str, tuple[float, float | None, float]]:
    """(low, high, p_high) per group of `current`: proposals moved at most max_step.

    A pinned group, a group with fewer than min_labels labels, or one without a finite
    proposal keeps its current threshold. Both thresholds of a mix are clamped to the step.
    """
    frozen = set(pinned)
    out: dict[str, tuple[float, float | None, float]] = {}
    for group, now in current.items():
        rule = proposed.groups.get(group)
        if (
            rule is None
            or group in frozen
            or label_counts.get(group, 0) < min_labels
            or not math.isfinite(rule.threshold)  # never published: NaN never compares again
            or not math.isfinite(rule.threshold_high if rule.threshold_high is not None else 0)
        ):
            out[group] = (now, None, 0.0)
            continue
        low = float(np.clip(rule.threshold, now - max_step, now + max_step))
        high = (
            None
            if rule.threshold_high is None
            else float(np.clip(rule.threshold_high, now - max_step, now + max_step))
        )
        out[group] = (low, None, 0.0) if high is None or high == low else (low, high, rule.p_high)
    return out
