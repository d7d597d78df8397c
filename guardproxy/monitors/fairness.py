"""Per-group decision counters and the fairness report built from them (Fairlearn's names)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from guardproxy.monitors.stats import difference_interval, ratio_interval, wilson_interval
from guardproxy.policy.models import FairnessSpec
from guardproxy.state.counts import GroupCounts


def counts_of_arrays(predicted: ArrayLike, labels: ArrayLike | None = None) -> GroupCounts:
    """Counts of a batch of 0/1 decisions with optional 0/1 labels."""
    pred = np.asarray(predicted).astype(bool)
    counts = GroupCounts(decisions=int(pred.size), selected=int(pred.sum()))
    if labels is not None:
        lab = np.asarray(labels).astype(bool)
        counts.tp, counts.fp = int((pred & lab).sum()), int((pred & ~lab).sum())
        counts.fn, counts.tn = int((~pred & lab).sum()), int((~pred & ~lab).sum())
    return counts


def _metric(successes: int, trials: int) -> dict[str, Any]:
    """A proportion with its count and Wilson 95% interval; value None when count is 0."""
    lo, hi = wilson_interval(successes, trials)
    value = successes / trials if trials > 0 else None
    return {"value": value, "count": trials, "ci95": [lo, hi]}


def group_metrics(counts: GroupCounts) -> dict[str, Any]:
    """selection_rate, true/false positive rate and positive predictive value of one group."""
    return {
        "selection_rate": _metric(counts.selected, counts.decisions),
        "true_positive_rate": _metric(counts.tp, counts.tp + counts.fn),
        "false_positive_rate": _metric(counts.fp, counts.fp + counts.tn),
        "positive_predictive_value": _metric(counts.tp, counts.tp + counts.fp),
        "decisions": counts.decisions,
        "labeled": counts.tp + counts.fp + counts.tn + counts.fn,
    }


def _values(per_group: Mapping[str, dict[str, Any]], metric: str) -> list[float]:
    """The defined values of a metric across groups."""
    values = [m[metric]["value"] for m in per_group.values()]
    return [float(v) for v in values if v is not None]


def _difference(values: list[float]) -> float | None:
    """max - min over groups; None with fewer than two groups to compare."""
    return max(values) - min(values) if len(values) >= 2 else None


def _ratio(values: list[float]) -> float | None:
    """min / max over groups; None with fewer than two groups or when max is 0."""
    if len(values) < 2 or max(values) <= 0:
        return None
    return min(values) / max(values)


def _versus_reference(per_group: Mapping[str, dict[str, Any]], reference: str) -> dict[str, Any]:
    """Each group's selection rate ratio and TPR difference against the reference group."""
    if reference not in per_group:
        raise ValueError(f"reference group {reference!r} is not among {sorted(per_group)}")
    ref = per_group[reference]
    out: dict[str, Any] = {}
    for group, metrics in per_group.items():
        sel, ref_sel = metrics["selection_rate"]["value"], ref["selection_rate"]["value"]
        tpr, ref_tpr = metrics["true_positive_rate"]["value"], ref["true_positive_rate"]["value"]
        out[group] = {
            "selection_rate_ratio": sel / ref_sel if sel is not None and ref_sel else None,
            "true_positive_rate_difference": (
                tpr - ref_tpr if tpr is not None and ref_tpr is not None else None
            ),
        }
    return out


def fairness_report(
    counts_by_group: Mapping[str, GroupCounts],
    bounds: FairnessSpec | None = None,
    reference_group: str | None = None,
) -> dict[str, Any]:
    """Per-group rates with Wilson intervals, Fairlearn's disparities, the policy's bounds."""
    per_group = {group: group_metrics(c) for group, c in counts_by_group.items()}
    tpr_gap = _difference(_values(per_group, "true_positive_rate"))
    fpr_gap = _difference(_values(per_group, "false_positive_rate"))
    ratio = _ratio(_values(per_group, "selection_rate"))
    report: dict[str, Any] = {
        "groups": per_group,
        "demographic_parity_difference": _difference(_values(per_group, "selection_rate")),
        "demographic_parity_ratio": ratio,
        "equal_opportunity_difference": tpr_gap,
        "equalized_odds_difference": (
            None if tpr_gap is None or fpr_gap is None else max(tpr_gap, fpr_gap)
        ),
    }
    report["bounds"] = bound_checks(counts_by_group, bounds) if bounds is not None else {}
    if reference_group is not None:
        report["reference_group"] = reference_group
        report["versus_reference"] = _versus_reference(per_group, reference_group)
    return report


def _extremes(pairs: Mapping[str, tuple[int, int]]) -> tuple[str, str] | None:
    """The groups with the lowest and the highest rate (None with fewer than two defined)."""
    defined = {g: x / n for g, (x, n) in pairs.items() if n > 0}
    if len(defined) < 2:
        return None
    return min(defined, key=defined.__getitem__), max(defined, key=defined.__getitem__)


def bound_checks(counts: Mapping[str, GroupCounts], bounds: FairnessSpec) -> dict[str, Any]:
    """The policy's fairness bounds against the counts, with 95% intervals.

    `violated`: the point estimate crosses the bound; `significant`: the whole interval does,
    so a gap that could be noise is not an alarm.
    """
    out: dict[str, Any] = {}
    if bounds.disparate_impact is not None:
        selected = {g: (c.selected, c.decisions) for g, c in counts.items()}
        out["disparate_impact"] = _ratio_check(selected, bounds.disparate_impact.min_ratio)
    if bounds.equal_opportunity is not None:
        found = {g: (c.tp, c.tp + c.fn) for g, c in counts.items()}
        limit = bounds.equal_opportunity.max_difference
        out["equal_opportunity"] = _difference_check(found, limit)
    return out


def _ratio_check(pairs: Mapping[str, tuple[int, int]], min_ratio: float) -> dict[str, Any]:
    ends = _extremes(pairs)
    if ends is None or pairs[ends[1]][0] == 0:
        return _unmeasured(min_ratio)
    low, high = pairs[ends[0]], pairs[ends[1]]
    value = (low[0] / low[1]) / (high[0] / high[1])
    interval = ratio_interval(low, high)
    return _check(value, min_ratio, ends, interval, value < min_ratio, interval[1] < min_ratio)


def _difference_check(pairs: Mapping[str, tuple[int, int]], limit: float) -> dict[str, Any]:
    ends = _extremes(pairs)
    if ends is None:
        return _unmeasured(limit)
    low, high = pairs[ends[0]], pairs[ends[1]]
    value = high[0] / high[1] - low[0] / low[1]
    interval = difference_interval(high, low)
    return _check(value, limit, ends, interval, value > limit, interval[0] > limit)


def _unmeasured(bound: float) -> dict[str, Any]:
    return {"value": None, "bound": bound, "violated": False, "significant": False}


def _check(
    value: float,
    bound: float,
    groups: tuple[str, str],
    interval: tuple[float, float],
    violated: bool,
    significant: bool,
) -> dict[str, Any]:
    return {
        "value": value,
        "bound": bound,
        "groups": list(groups),
        "ci95": list(interval),
        "violated": violated,
        "significant": significant,
    }
