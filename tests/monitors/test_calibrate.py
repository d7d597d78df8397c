"""Tests for the threshold optimizer, the guard rails, the policy snippet and the CSV command."""

from __future__ import annotations

import csv
import dataclasses
import functools
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.base import BaseEstimator

from guardproxy.monitors.calibrate import (
    FitResult,
    apply_guard_rails,
    fit_from_histograms,
    fit_thresholds,
)
from guardproxy.monitors.histograms import ScoreHistogram, score_bin
from tests.datasets import DATA, compas_rows

CONSTRAINTS = ["none", "per_group", "demographic_parity", "equal_opportunity", "equalized_odds"]

# group a: the optimum is 0.6 (TPR 1); group b: 0.9 (TPR 0.5) — equal opportunity binds
EO_SCORES = [0.2, 0.4, 0.6, 0.8, 0.85, 0.3, 0.5, 0.7, 0.9]
EO_LABELS = [0, 0, 1, 1, 1, 1, 0, 0, 1]
EO_GROUPS = ["a"] * 5 + ["b"] * 4


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, labels and three groups with different base rates and score shifts."""
    rng = np.random.default_rng(seed)
    groups = rng.choice(np.array(["a", "b", "c"]), n, p=[0.5, 0.3, 0.2])
    labels = (rng.random(n) < np.where(groups == "a", 0.3, 0.5)).astype(int)
    scores = np.clip(rng.normal(0.4 + 0.25 * labels + 0.08 * (groups == "b"), 0.18), 0, 1)
    return scores, labels, groups


def test_per_group_and_none_worked_example() -> None:
    own = fit_thresholds(EO_SCORES, EO_LABELS, EO_GROUPS, constraint="per_group")
    assert own.groups["a"].threshold == 0.6 and own.groups["b"].threshold == 0.9
    assert own.objective_value == pytest.approx(8 / 9)
    one = fit_thresholds(EO_SCORES, EO_LABELS, EO_GROUPS, constraint="none")
    assert one.groups["a"].threshold == one.groups["b"].threshold
    assert one.objective_value <= own.objective_value


def test_equal_opportunity_worked_example() -> None:
    result = fit_thresholds(EO_SCORES, EO_LABELS, EO_GROUPS, constraint="equal_opportunity")
    a, b = result.groups["a"], result.groups["b"]
    assert (a.threshold, b.threshold) == (0.6, 0.3)
    assert a.threshold_high is None and b.threshold_high is None
    assert a.tpr == b.tpr == 1.0
    assert result.objective_value == pytest.approx(7 / 9)


def test_tolerance_relaxes_equal_opportunity() -> None:
    quarter = fit_thresholds(EO_SCORES, EO_LABELS, EO_GROUPS, tolerance=0.25)
    assert quarter.gaps()["tpr"] == pytest.approx(0.25)
    assert quarter.objective_value == pytest.approx(7.5 / 9)
    half = fit_thresholds(EO_SCORES, EO_LABELS, EO_GROUPS, tolerance=0.5)
    assert half.objective_value == pytest.approx(8 / 9)


def test_demographic_parity_worked_example_mixes() -> None:
    scores = [0.2, 0.8, 0.2, 0.4, 0.6, 0.8]
    labels = [0, 1, 0, 1, 1, 1]
    groups = ["a", "a", "b", "b", "b", "b"]
    result = fit_thresholds(scores, labels, groups, constraint="demographic_parity")
    a, b = result.groups["a"], result.groups["b"]
    assert (a.threshold, a.threshold_high, a.p_high) == (0.2, 0.8, pytest.approx(0.5))
    assert (b.threshold, b.threshold_high) == (0.4, None)
    assert a.selection_rate == pytest.approx(0.75) and b.selection_rate == pytest.approx(0.75)
    assert result.objective_value == pytest.approx(5.5 / 6)


def test_cost_objective_and_utilities() -> None:
    scores, labels, groups = [0.1, 0.3, 0.6, 0.8], [0, 1, 0, 1], ["g"] * 4
    costly_misses = fit_thresholds(scores, labels, groups, "none", "cost", cost=(0, 1, 5, 0))
    assert costly_misses.groups["g"].threshold == 0.3
    assert costly_misses.objective_value == pytest.approx(0.25)
    utility = fit_thresholds(scores, labels, groups, "none", "cost", cost=(0, 1, 0, -3))
    assert utility.objective_value == pytest.approx(-1.25)
    with pytest.raises(ValueError, match="cost"):
        fit_thresholds(scores, labels, groups, "none", "cost")


def test_balanced_accuracy_matches_sklearn() -> None:
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(3)
    labels = (rng.random(3000) < 0.1).astype(int)
    scores, groups = rng.normal(0.3 + 0.3 * labels, 0.2), rng.choice(np.array(["a", "b"]), 3000)
    result = fit_thresholds(scores, labels, groups, "none", "balanced_accuracy")
    pred = scores >= result.groups["a"].threshold
    assert result.objective_value == pytest.approx(balanced_accuracy_score(labels, pred))
    accuracy = fit_thresholds(scores, labels, groups, "none", "accuracy")
    assert accuracy.groups["a"].threshold > result.groups["a"].threshold


@pytest.mark.parametrize(
    "constraint", ["demographic_parity", "equal_opportunity", "equalized_odds"]
)
def test_mixes_hit_a_common_rate(constraint: str) -> None:
    scores, labels, groups = synthetic(20_000)
    result = fit_thresholds(scores, labels, groups, constraint=constraint)
    gaps = result.gaps()
    names = {"demographic_parity": ["selection_rate"], "equal_opportunity": ["tpr"]}
    for name in names.get(constraint, ["tpr", "fpr"]):
        assert gaps[name] == pytest.approx(
            0.0, abs=1e-3 if constraint == "equalized_odds" else 1e-9
        )
    free = fit_thresholds(scores, labels, groups, constraint="per_group")
    assert result.objective_value <= free.objective_value + 1e-12
    assert free.gaps()["tpr"] > 0.05


def test_realized_mix_reproduces_the_reported_rate() -> None:
    scores, labels, groups = synthetic(20_000, seed=1)
    fitted = fit_thresholds(scores, labels, groups, "demographic_parity").groups
    group, rule = next((g, r) for g, r in fitted.items() if r.threshold_high is not None)
    rng = np.random.default_rng(0)
    member = scores[groups == group]
    assert rule.threshold_high is not None
    draws = np.repeat(member[None, :], 200, axis=0)
    threshold = np.where(rng.random(draws.shape) < rule.p_high, rule.threshold_high, rule.threshold)
    assert (draws >= threshold).mean() == pytest.approx(rule.selection_rate, abs=0.003)


def test_fifty_thousand_rows_fit_fast() -> None:
    scores, labels, groups = synthetic(50_000)
    start = time.perf_counter()
    for constraint in CONSTRAINTS:
        fit_thresholds(scores, labels, groups, constraint=constraint)
    assert time.perf_counter() - start < 1.5


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_histograms_agree_with_raw_scores(constraint: str) -> None:
    scores, labels, groups = synthetic(30_000, seed=2)
    scores = np.round(scores, 2)
    raw = fit_thresholds(scores, labels, groups, constraint=constraint)
    hists = {}
    for g in ("a", "b", "c"):
        hists[g] = ScoreHistogram(100)
        hists[g].add(scores[groups == g], labels[groups == g])
    binned = fit_from_histograms(hists, constraint=constraint)
    assert binned.objective_value == pytest.approx(raw.objective_value, abs=0.005)
    for g in ("a", "b", "c"):
        assert binned.groups[g].threshold == pytest.approx(raw.groups[g].threshold, abs=0.011)


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="unknown constraint"):
        fit_thresholds([0.1], [1], ["a"], constraint="parity")
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        fit_thresholds([0.1], [2], ["a"])
    with pytest.raises(ValueError, match="one length"):
        fit_thresholds([0.1, 0.2], [1], ["a"])
    with pytest.raises(ValueError, match="finite"):
        fit_thresholds([float("nan")], [1], ["a"])
    with pytest.raises(ValueError, match="tolerance"):
        fit_thresholds([0.1], [1], ["a"], tolerance=2.0)


def test_guard_rails() -> None:
    result = fit_thresholds(
        [0.2, 0.8, 0.2, 0.4, 0.6, 0.8], [0, 1, 0, 1, 1, 1], list("aabbbb"), "demographic_parity"
    )
    current = {"a": 0.5, "b": 0.5, "pinned": 0.3, "few": 0.5}
    proposed = FitResult(
        result.constraint,
        result.objective,
        0.0,
        {**result.groups, "pinned": result.groups["b"], "few": result.groups["b"]},
        result.objective_value,
    )
    counts = {"a": 500, "b": 500, "pinned": 500, "few": 10}
    rails = apply_guard_rails(
        current, proposed, counts, min_labels=200, max_step=0.05, pinned=["pinned"]
    )
    assert rails["a"] == (0.45, 0.55, pytest.approx(0.5))
    assert rails["b"] == (0.45, None, 0.0)
    assert rails["pinned"] == (0.3, None, 0.0) and rails["few"] == (0.5, None, 0.0)
    wide = apply_guard_rails(current, proposed, counts, 200, 1.0, [])
    assert wide["a"] == (0.2, 0.8, pytest.approx(0.5))
    nan = dataclasses.replace(result.groups["b"], threshold=float("nan"))
    broken = dataclasses.replace(proposed, groups={**proposed.groups, "b": nan})
    assert apply_guard_rails(current, broken, counts, 200, 0.05)["b"] == (0.5, None, 0.0)


def write(path: Path, text: str) -> str:
    """Write a CSV and return its name."""
    path.write_text(text)
    return str(path)


@functools.cache
def adult_scores() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Logistic regression scores on the Adult subset; train = rows from adult.data."""
    from sklearn.linear_model import LogisticRegression

    with open(DATA / "adult_subset.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    numeric = ["age", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
    levels = {c: sorted({r[c] for r in rows}) for c in ("marital_status", "relationship")}
    x = np.array(
        [
            [float(r[c]) for c in numeric]
            + [float(r[c] == v) for c, vs in levels.items() for v in vs]
            + [float(r["sex"] == "Male")]
            for r in rows
        ]
    )
    x[:, 2:4] = np.log1p(x[:, 2:4])
    x[:, :5] = (x[:, :5] - x[:, :5].mean(0)) / x[:, :5].std(0)
    y = np.array([int(r["income"]) for r in rows])
    train = np.array([r["split"] == "train" for r in rows])
    model = LogisticRegression(max_iter=1000).fit(x[train], y[train])
    return model.predict_proba(x)[:, 1], y, np.array([r["sex"] for r in rows]), train


def compas_scores() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """decile_score / 10 for African-American and Caucasian rows; a seeded 60% train split."""
    rows = [r for r in compas_rows() if r["race"] in ("African-American", "Caucasian")]
    scores = np.array([int(r["decile_score"]) / 10 for r in rows])
    labels = np.array([int(r["two_year_recid"]) for r in rows])
    train = np.random.default_rng(7).random(len(rows)) < 0.6
    return scores, labels, np.array([r["race"] for r in rows]), train


def expected(result: FitResult, scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The probability that each row is decided positive under the fitted rules."""
    prob = np.zeros_like(scores)
    for g, r in result.groups.items():
        member = groups == g
        high = r.threshold if r.threshold_high is None else r.threshold_high
        low_pos, high_pos = scores[member] >= r.threshold, scores[member] >= high
        prob[member] = (1 - r.p_high) * low_pos + r.p_high * high_pos
    return prob


def accuracy(prob: np.ndarray, labels: np.ndarray) -> float:
    """Expected accuracy of randomized decisions."""
    return float(np.mean(np.where(labels == 1, prob, 1 - prob)))


def parity_gap(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray, tpr: bool) -> float:
    """max - min over groups of the expected selection rate (or the TPR)."""
    rates = [pred[(groups == g) & ((labels == 1) | (not tpr))].mean() for g in np.unique(groups)]
    return float(max(rates) - min(rates))


@pytest.mark.parametrize("data", [adult_scores, compas_scores], ids=["adult", "compas"])
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("equal_opportunity", "true_positive_rate_parity"),
        ("demographic_parity", "demographic_parity"),
    ],
)
def test_matches_fairlearn_threshold_optimizer(data: Any, ours: str, theirs: str) -> None:
    from fairlearn.postprocessing import ThresholdOptimizer

    scores, labels, groups, train = data()
    fair = ThresholdOptimizer(
        estimator=Column(),
        constraints=theirs,
        objective="accuracy_score",
        prefit=True,
        predict_method="predict",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fair.fit(scores[train, None], labels[train], sensitive_features=groups[train])
        draws = [
            fair.predict(scores[~train, None], sensitive_features=groups[~train], random_state=seed)
            for seed in range(DRAWS)
        ]
    theirs_pred = np.mean(draws, axis=0)
    fitted = fit_thresholds(scores[train], labels[train], groups[train], constraint=ours)
    ours_pred = expected(fitted, scores[~train], groups[~train])
    held = labels[~train], groups[~train], ours == "equal_opportunity"
    assert parity_gap(ours_pred, *held) <= parity_gap(theirs_pred, *held) + 0.01
    assert accuracy(ours_pred, labels[~train]) >= accuracy(theirs_pred, labels[~train]) - 0.005


def test_grid_sweep_approaches_the_exact_sweep() -> None:
    scores, labels, groups = synthetic(10_000, seed=4)
    exact = fit_thresholds(scores, labels, groups, "equal_opportunity")
    gridded = fit_thresholds(scores, labels, groups, "equal_opportunity", grid=1000)
    assert gridded.objective_value <= exact.objective_value + 1e-12
    assert gridded.objective_value == pytest.approx(exact.objective_value, abs=1e-3)


DRAWS = 25  # Fairlearn's randomized predictions, averaged over seeds 0..24


class Column(BaseEstimator):  # type: ignore[misc]
    """A prefit scorer for Fairlearn: the score is the first column."""

    fitted_ = True

    def fit(self, x: object, y: object) -> Column:
        """Nothing to learn."""
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The score column."""
        return np.asarray(x)[:, 0]


def test_one_score_falls_in_the_bin_the_histogram_gives_it() -> None:
    scores = [-1.0, 0.0, 0.005, 0.01, 0.0999999, 0.1, 0.7, 0.705, 0.99, 1.0, 2.0]
    for layout in [(100, 0.0, 1.0), (7, -0.3, 1.3), (1, 0.0, 1.0)]:
        expected = ScoreHistogram(*layout).bin_index(scores).tolist()
        assert [score_bin(s, *layout) for s in scores] == expected
