"""Per-constraint threshold search on per-group score curves.

Every objective is linear in each group's selected positive and negative weights, so parity
constraints reduce to sweeping a common rate over the sum of the groups' upper concave hulls
(Hardt, Price & Srebro 2016). A group's fitted rule is a mix of two candidate thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from guardproxy.monitors.histograms import Curve, FloatArray, chord_mix, hull_mix, upper_hull

Mix = tuple[int, int, float]  # (low index, high index, p_high) on a curve
EXACT = 1e-12
ROC_GRID = 2000


def fit_mixes(
    curves: Mapping[str, Curve],
    pooled: Curve,
    constraint: str,
    ab: tuple[float, float],
    tolerance: float,
    grid: int | None,
) -> dict[str, Mix]:
    """Each group's mix under the constraint, maximizing a * TP - b * FP overall."""
    if constraint == "none":
        return _fit_none(curves, pooled, *ab)
    if constraint == "per_group":
        return {g: own_best(c, *ab) for g, c in curves.items()}
    if constraint == "equalized_odds":
        return _fit_equalized_odds(curves, ab, tolerance, grid)
    return _fit_parity(curves, constraint, ab, tolerance, grid)


def gain_weights(
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


def objective_value(
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


def own_best(curve: Curve, a: float, b: float) -> Mix:
    """The group's own optimal single threshold."""
    k = int(np.argmax(a * curve.pos - b * curve.neg))
    return (k, k, 0.0)


def _fit_none(curves: Mapping[str, Curve], pooled: Curve, a: float, b: float) -> dict[str, Mix]:
    """One threshold for everybody."""
    threshold = float(pooled.thresholds[own_best(pooled, a, b)[0]])
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
            mixes[g] = own_best(c, *ab)
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
            mixes[g] = own_best(c, *ab)
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


def selected_totals(curves: Mapping[str, Curve], mixes: Mapping[str, Mix]) -> tuple[float, float]:
    """Overall selected (positive, negative) weight."""
    tp = fp = 0.0
    for g, (low, high, p) in mixes.items():
        tp += (1 - p) * curves[g].pos[low] + p * curves[g].pos[high]
        fp += (1 - p) * curves[g].neg[low] + p * curves[g].neg[high]
    return tp, fp
