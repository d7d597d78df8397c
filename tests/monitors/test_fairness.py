"""Tests for the fairness counters, the score histograms and the fairness report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import redis

from guardproxy.monitors.fairness import counts_of_arrays, fairness_report
from guardproxy.monitors.histograms import ScoreHistogram
from guardproxy.monitors.stats import wilson_interval
from guardproxy.policy.models import FairnessSpec
from guardproxy.state.counts import GroupCounts
from tests.datasets import compas_rows


def compas_counts() -> dict[str, GroupCounts]:
    """Counts per race for decile_score > 4 against two_year_recid."""
    counts: dict[str, GroupCounts] = {}
    for r in compas_rows():
        if r["race"] in ("African-American", "Caucasian"):
            counts.setdefault(r["race"], GroupCounts()).record(
                int(r["decile_score"]) > 4, r["two_year_recid"] == "1"
            )
    return counts


def test_record_counts_each_confusion_cell() -> None:
    counts = GroupCounts()
    for predicted, label in [(1, 1), (1, 0), (0, 1), (0, 0), (1, None), (0, None)]:
        counts.record(bool(predicted), None if label is None else bool(label))
    assert counts.to_dict() == {"decisions": 6, "selected": 3, "tp": 1, "fp": 1, "tn": 1, "fn": 1}


def test_from_arrays_matches_record_and_merge_adds() -> None:
    pred, labels = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    batch = counts_of_arrays(pred, labels)
    one = GroupCounts()
    for p, y in zip(pred, labels, strict=True):
        one.record(bool(p), bool(y))
    assert batch == one
    merged = batch.merge(counts_of_arrays([1, 0]))
    assert merged.decisions == 7 and merged.selected == 4 and merged.tp == 2


def test_counts_round_trip_through_a_redis_hash() -> None:
    client = redis.Redis(host="127.0.0.1", port=6379, db=13, decode_responses=True)
    key = "guardproxy-test:fairness:sg:female"
    client.delete(key)
    try:
        for replica in (
            counts_of_arrays([1, 0, 1], [1, 0, 0]),
            counts_of_arrays([0], [1]),
        ):
            for field, value in replica.to_dict().items():
                client.hincrby(key, field, value)
        assert GroupCounts.from_dict(client.hgetall(key)) == GroupCounts(4, 2, 1, 1, 1, 1)
    finally:
        client.delete(key)


def test_bin_index_is_exact_and_clipped() -> None:
    hist = ScoreHistogram(bins=10, low=0.0, high=2.0)
    index = hist.bin_index([-1.0, 0.0, 0.19, 0.2, 1.99, 2.0, 5.0])
    assert index.tolist() == [0, 0, 0, 1, 9, 9, 9]
    with pytest.raises(ValueError, match="NaN"):
        hist.bin_index([float("nan")])


def test_histogram_rates_at_a_bin_edge() -> None:
    hist = ScoreHistogram(bins=4)
    hist.add([0.1, 0.3, 0.6, 0.9, 0.2, 0.8], [1, 1, 1, 1, 0, 0])
    assert hist.rates(0.5) == {
        "selection_rate": 3 / 6,
        "true_positive_rate": 2 / 4,
        "false_positive_rate": 1 / 2,
    }
    assert hist.rates(0.0)["selection_rate"] == 1.0
    assert hist.rates(1.0)["selection_rate"] == 0.0
    assert hist.rates(0.4) == hist.rates(0.5)  # rounded up to the next edge
    assert ScoreHistogram(bins=4).rates(0.5)["true_positive_rate"] is None


def test_histogram_merge_and_dict_round_trip() -> None:
    a, b = ScoreHistogram(bins=100), ScoreHistogram(bins=100)
    a.add([0.17, 0.5], [1, 0])
    b.add([0.171, 0.99], [1, 1])
    merged = a.merge(b)
    flat = merged.to_dict()
    assert flat == {"p:17": 2, "p:99": 1, "n:50": 1}
    encoded = {k: str(v) for k, v in {**flat, "tp": 3}.items()}  # as Redis answers
    back = ScoreHistogram.from_dict(encoded, bins=100)
    assert back.pos.tolist() == merged.pos.tolist() and back.neg.tolist() == merged.neg.tolist()
    with pytest.raises(ValueError, match="different bins"):
        a.merge(ScoreHistogram(bins=10))
    with pytest.raises(ValueError, match="beyond"):
        ScoreHistogram.from_dict({"p:200": 1}, bins=100)


def test_report_values_and_wilson_intervals() -> None:
    report = fairness_report(
        {"a": GroupCounts(10, 8, 6, 2, 1, 1), "b": GroupCounts(10, 4, 3, 1, 5, 1)}
    )
    a = report["groups"]["a"]
    assert a["selection_rate"] == {"value": 0.8, "count": 10, "ci95": list(wilson_interval(8, 10))}
    assert a["true_positive_rate"]["value"] == pytest.approx(6 / 7)
    assert a["false_positive_rate"]["value"] == pytest.approx(2 / 3)
    assert a["positive_predictive_value"]["value"] == pytest.approx(6 / 8)
    assert report["demographic_parity_difference"] == pytest.approx(0.4)
    assert report["demographic_parity_ratio"] == pytest.approx(0.5)
    assert report["bounds"] == {}  # none asked for
    assert report["equal_opportunity_difference"] == pytest.approx(6 / 7 - 3 / 4)
    assert report["equalized_odds_difference"] == pytest.approx(2 / 3 - 1 / 6)
    json.dumps(report)


def test_report_handles_empty_groups_and_a_reference() -> None:
    report = fairness_report(
        {"a": GroupCounts(5, 4), "b": GroupCounts(5, 4), "c": GroupCounts()}, reference_group="a"
    )
    assert report["groups"]["c"]["selection_rate"]["value"] is None
    assert report["groups"]["c"]["selection_rate"]["ci95"] == [0.0, 1.0]
    assert report["equal_opportunity_difference"] is None
    assert report["versus_reference"]["b"]["selection_rate_ratio"] == 1.0
    assert report["versus_reference"]["c"]["selection_rate_ratio"] is None
    with pytest.raises(ValueError, match="reference group"):
        fairness_report({"a": GroupCounts()}, reference_group="z")


def test_compas_reproduces_propublica() -> None:
    rows = compas_rows()
    assert len(rows) == 6172
    report = fairness_report(compas_counts(), FairnessSpec(), reference_group="Caucasian")
    groups = report["groups"]
    black, white = groups["African-American"], groups["Caucasian"]
    assert (black["decisions"], white["decisions"]) == (3175, 2103)
    expected = {
        "selection_rate": (0.576, 0.331),
        "true_positive_rate": (0.715, 0.504),
        "false_positive_rate": (0.423, 0.220),
        "positive_predictive_value": (0.649, 0.595),
    }
    for metric, (b, w) in expected.items():
        assert black[metric]["value"] == pytest.approx(b, abs=0.001)
        assert white[metric]["value"] == pytest.approx(w, abs=0.001)
    impact = report["bounds"]["disparate_impact"]
    assert impact["violated"] is True and impact["significant"] is True
    assert impact["bound"] == 0.8 and impact["ci95"][1] < 0.8


def test_bounds_come_from_the_policy_and_a_gap_within_noise_is_not_significant() -> None:
    small = {"a": GroupCounts(20, 6, 4, 2, 10, 4), "b": GroupCounts(20, 10, 8, 2, 8, 2)}
    report = fairness_report(small, FairnessSpec.model_validate(
        {"disparate_impact": {"min_ratio": 0.8}, "equal_opportunity": {"max_difference": 0.1}}
    ))  # fmt: skip
    impact, opportunity = (
        report["bounds"]["disparate_impact"],
        report["bounds"]["equal_opportunity"],
    )
    assert impact["value"] == pytest.approx(0.6) and impact["violated"]
    assert not impact["significant"]  # 6/20 against 10/20 could be chance
    assert opportunity["value"] == pytest.approx(0.8 - 0.5) and opportunity["violated"]
    assert not opportunity["significant"]
    strict = FairnessSpec.model_validate({"disparate_impact": {"min_ratio": 0.5}})
    relaxed = fairness_report(small, strict)["bounds"]
    assert not relaxed["disparate_impact"]["violated"] and "equal_opportunity" in relaxed
    loose = FairnessSpec.model_validate({"equal_opportunity": {"max_difference": 0.4}})
    assert not fairness_report(small, loose)["bounds"]["equal_opportunity"]["violated"]
    none = FairnessSpec.model_validate({"disparate_impact": None, "equal_opportunity": None})
    assert fairness_report(small, none)["bounds"] == {}
    large = {
        g: GroupCounts(**{k: v * 100 for k, v in c.to_dict().items()}) for g, c in small.items()
    }
    assert fairness_report(large, FairnessSpec())["bounds"]["disparate_impact"]["significant"]


def test_compas_matches_fairlearn() -> None:
    from fairlearn import metrics as fm

    rows = [r for r in compas_rows() if r["race"] in ("African-American", "Caucasian")]
    y = np.array([int(r["two_year_recid"]) for r in rows])
    pred = np.array([int(r["decile_score"]) > 4 for r in rows]).astype(int)
    race = np.array([r["race"] for r in rows])
    report = fairness_report(compas_counts())
    kwargs = {"y_true": y, "y_pred": pred, "sensitive_features": race}
    assert report["demographic_parity_difference"] == pytest.approx(
        fm.demographic_parity_difference(**kwargs)
    )
    assert report["demographic_parity_ratio"] == pytest.approx(
        fm.demographic_parity_ratio(**kwargs)
    )
    assert report["equal_opportunity_difference"] == pytest.approx(
        fm.equal_opportunity_difference(**kwargs)
    )
    assert report["equalized_odds_difference"] == pytest.approx(
        fm.equalized_odds_difference(**kwargs)
    )
    frame = fm.MetricFrame(
        metrics={
            "tpr": fm.true_positive_rate,
            "fpr": fm.false_positive_rate,
            "sel": fm.selection_rate,
        },
        **kwargs,
    )
    for group, values in frame.by_group.iterrows():
        mine = report["groups"][group]
        assert mine["true_positive_rate"]["value"] == pytest.approx(values["tpr"])
        assert mine["false_positive_rate"]["value"] == pytest.approx(values["fpr"])
        assert mine["selection_rate"]["value"] == pytest.approx(values["sel"])
