"""Per-group decision thresholds under a fairness constraint, fitted offline or live.

A group's rule is positive iff score >= threshold, where the threshold is `threshold_high`
with probability `p_high` and `threshold` otherwise. Every objective is linear in each
group's selected positive and negative weights, so parity constraints reduce to sweeping a
common rate over the sum of the groups' upper concave hulls (Hardt, Price & Srebro 2016).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

from guardproxy.monitors.histograms import (
    Curve,
    FloatArray,
    ScoreHistogram,
    chord_mix,
    curve_from_scores,
    hull_mix,
    upper_hull,
)

Constraint = Literal[
    "none", "per_group", "demographic_parity", "equal_opportunity", "equalized_odds"
]
Objective = Literal["accuracy", "balanced_accuracy", "cost"]
Mix = tuple[int, int, float]  # (low index, high index, p_high) on a curve
EXACT = 1e-12
ROC_GRID = 2000


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


def _gain_weights(
    objective: str, cost: tuple[float, ...] | None, pos: float, neg: float
) -> tuple[float, float]:
    """(a, b) such that maximizing a * TP - b * FP optimizes the objective."""
    if objective == "accuracy":
        return 1.0, 1.0
    if objective == "balanced_accuracy":
        if pos <= 0 or neg <= 0:
            raise ValueError("balanced_accuracy needs both positive and negative labels")
        return 0.5 / pos, 0.5 / neg
    assert cost is not None
    tn, fp, fn, tp = cost
    return fn - tp, fp - tn


def _objective_value(
    objective: str,
    cost: tuple[float, ...] | None,
    sel: tuple[float, float],
    totals: tuple[float, float],
) -> float:
    """The objective at overall selected (TP, FP) weights and label totals (P, N)."""
    (tp, fp), (pos, neg) = sel, totals
    if objective == "accuracy":
        return (tp + neg - fp) / (pos + neg)
    if objective == "balanced_accuracy":
        return 0.5 * (tp / pos + (neg - fp) / neg)
    assert cost is not None
    c_tn, c_fp, c_fn, c_tp = cost
    return (c_tn * (neg - fp) + c_fp * fp + c_fn * (pos - tp) + c_tp * tp) / (pos + neg)


def _own_best(curve: Curve, a: float, b: float) -> Mix:
    """The group's own optimal single threshold."""
    k = int(np.argmax(a * curve.pos - b * curve.neg))
    return (k, k, 0.0)


def _fit_none(curves: Mapping[str, Curve], pooled: Curve, a: float, b: float) -> dict[str, Mix]:
    """One threshold for everybody."""
    threshold = float(pooled.thresholds[_own_best(pooled, a, b)[0]])
    return {g: (c.index_at(threshold), c.index_at(threshold), 0.0) for g, c in curves.items()}


def _axis(curve: Curve, constraint: str) -> FloatArray | None:
    """The rate the constraint equalizes, per candidate; None when undefined for the group."""
    if constraint == "demographic_parity":
        total = curve.pos_total + curve.neg_total
        return (curve.pos + curve.neg) / total if total > 0 else None
    return curve.pos / curve.pos_total if curve.pos_total > 0 else None


def _targets(best: float, rates: FloatArray, tolerance: float) -> FloatArray:
    """A group's rate given a common base rate: its own optimum within [rate, rate + tol]."""
    targets: FloatArray = np.clip(best, rates, np.minimum(rates + tolerance, 1.0))
    return targets


def _fit_parity(
    curves: Mapping[str, Curve],
    constraint: str,
    ab: tuple[float, float],
    tolerance: float,
    grid: int | None,
) -> dict[str, Mix]:
    """Equal selection rates or TPRs: sweep the common rate over the hulls' breakpoints."""
    mixes: dict[str, Mix] = {}
    hulls: dict[str, tuple[FloatArray, FloatArray, Any]] = {}
    for g, c in curves.items():
        x = _axis(c, constraint)
        if x is None:
            mixes[g] = _own_best(c, *ab)
            continue
        idx = upper_hull(x, ab[0] * c.pos - ab[1] * c.neg)
        hulls[g] = (x[idx], ab[0] * c.pos[idx] - ab[1] * c.neg[idx], idx)
    if not hulls:
        return mixes
    if grid:
        rates = np.linspace(0.0, 1.0, grid + 1)
    else:
        xs = np.concatenate([h[0] for h in hulls.values()])
        rates = np.unique(np.clip(np.concatenate([xs, xs - tolerance]), 0.0, 1.0))
    bests = {g: float(h[0][np.argmax(h[1])]) for g, h in hulls.items()}
    total = sum(
        np.interp(_targets(bests[g], rates, tolerance), h[0], h[1]) for g, h in hulls.items()
    )
    rate = rates[int(np.argmax(total))]
    for g, (xs_g, _, idx) in hulls.items():
        mixes[g] = hull_mix(xs_g, idx, float(_targets(bests[g], np.array([rate]), tolerance)[0]))
    return mixes


def _fit_equalized_odds(
    curves: Mapping[str, Curve], ab: tuple[float, float], tolerance: float, grid: int | None
) -> dict[str, Mix]:
    """A common (FPR, TPR) point inside every group's ROC hull, best for the objective."""
    mixes: dict[str, Mix] = {}
    rocs: dict[str, tuple[FloatArray, FloatArray, Any]] = {}
    for g, c in curves.items():
        if c.pos_total <= 0 or c.neg_total <= 0:
            mixes[g] = _own_best(c, *ab)
            continue
        fpr, tpr = c.neg / c.neg_total, c.pos / c.pos_total
        rocs[g] = (fpr, tpr, upper_hull(fpr, tpr))
    if not rocs:
        return mixes
    hull_fprs = [r[0][r[2]] for r in rocs.values()]
    fprs = np.unique(np.concatenate([*hull_fprs, np.linspace(0.0, 1.0, (grid or ROC_GRID) + 1)]))
    tops = {g: np.interp(fprs, f[i], t[i]) for g, (f, t, i) in rocs.items()}
    ceiling = np.minimum.reduce(list(tops.values())) + tolerance
    gain = sum(
        ab[0] * curves[g].pos_total * np.minimum(top, ceiling) - ab[1] * curves[g].neg_total * fprs
        for g, top in tops.items()
    )
    k = int(np.argmax(gain))
    for g, (fpr, tpr, idx) in rocs.items():
        target = min(float(tops[g][k]), float(ceiling[k]))
        if target >= tops[g][k] - EXACT:
            mixes[g] = hull_mix(fpr[idx], idx, float(fprs[k]))
        else:
            mixes[g] = chord_mix(fpr, tpr, idx, (float(fprs[k]), target))
    return mixes


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
    ab = _gain_weights(objective, cost, pos, neg)
    if constraint == "none":
        mixes = _fit_none(curves, pooled, *ab)
    elif constraint == "per_group":
        mixes = {g: _own_best(c, *ab) for g, c in curves.items()}
    elif constraint == "equalized_odds":
        mixes = _fit_equalized_odds(curves, ab, tolerance, grid)
    else:
        mixes = _fit_parity(curves, constraint, ab, tolerance, grid)
    rules = {g: _rule(curves[g], mixes[g]) for g in sorted(curves)}
    if constraint == "none":  # report the common threshold, not each group's equivalent
        common = float(pooled.thresholds[_own_best(pooled, *ab)[0]])
        rules = {g: replace(r, threshold=common) for g, r in rules.items()}
    sel = _selected_totals(curves, mixes)
    value = _objective_value(objective, cost, sel, (pos, neg))
    return FitResult(constraint, objective, tolerance, rules, float(value))


def _selected_totals(curves: Mapping[str, Curve], mixes: Mapping[str, Mix]) -> tuple[float, float]:
    """Overall selected (positive, negative) weight."""
    tp = fp = 0.0
    for g, (low, high, p) in mixes.items():
        tp += (1 - p) * curves[g].pos[low] + p * curves[g].pos[high]
        fp += (1 - p) * curves[g].neg[low] + p * curves[g].neg[high]
    return tp, fp


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

    A pinned group, a group with fewer than min_labels labels, or one without a proposal
    keeps its current threshold. Both thresholds of a mix are clamped to the step.
    """
    frozen = set(pinned)
    out: dict[str, tuple[float, float | None, float]] = {}
    for group, now in current.items():
        rule = proposed.groups.get(group)
        if rule is None or group in frozen or label_counts.get(group, 0) < min_labels:
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
