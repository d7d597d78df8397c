"""Tests for the monitor statistics, checked against scipy on random and real data."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as st
from scipy.spatial.distance import jensenshannon

from guardproxy.monitors import stats

DATA = Path(__file__).parent.parent / "data" / "adult_drift_sample.csv"
SIZES = [(1, 1), (1, 5), (3, 7), (10, 10), (20, 30), (64, 64), (100, 37), (250, 600)]


def adult() -> dict[str, list[str]]:
    with DATA.open() as f:
        rows = list(csv.DictReader(f))
    return {k: [r[k] for r in rows] for k in rows[0]}


def test_wilson_interval_known_value() -> None:
    low, high = stats.wilson_interval(8, 10)
    assert low == pytest.approx(0.4901625, abs=1e-6)
    assert high == pytest.approx(0.9433178, abs=1e-6)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


def test_psi_worked_example_by_hand() -> None:
    # expected shares 0.5, 0.3, 0.2; actual shares 0.4, 0.4, 0.2
    by_hand = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.4 - 0.3) * math.log(0.4 / 0.3)
    assert by_hand == pytest.approx(0.05108, abs=1e-5)
    assert stats.psi([50, 30, 20], [40, 40, 20], eps=0.0) == pytest.approx(by_hand, rel=1e-12)


def test_psi_smooths_empty_bin_as_documented() -> None:
    eps = 1e-4
    pe = [(0.5 + eps) / (1 + 2 * eps), (0.5 + eps) / (1 + 2 * eps)]
    pa = [(1.0 + eps) / (1 + 2 * eps), eps / (1 + 2 * eps)]
    by_hand = sum((a - e) * math.log(a / e) for a, e in zip(pa, pe, strict=True))
    assert stats.psi([10, 10], [7, 0], eps=eps) == pytest.approx(by_hand, rel=1e-12)
    assert stats.psi([3, 5, 2], [3, 5, 2]) == 0.0


@pytest.mark.parametrize(
    ("e", "a", "message"),
    [
        ([1, 2], [1, 2, 3], "differ in length"),
        ([0, 0], [1, 1], "all zero"),
        ([-1, 2], [1, 1], "non-negative"),
    ],
)
def test_psi_rejects_bad_counts(e: list[int], a: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stats.psi(e, a)


def test_psi_without_smoothing_rejects_empty_bins() -> None:
    with pytest.raises(ValueError, match="eps > 0"):
        stats.psi([1, 1], [1, 0], eps=0.0)


@pytest.mark.parametrize(("n1", "n2"), SIZES)
@pytest.mark.parametrize("ties", [False, True])
def test_ks_2samp_matches_scipy(n1: int, n2: int, ties: bool) -> None:
    rng = np.random.default_rng(n1 * 1000 + n2)
    for shift in (0.0, 0.3, 1.0):
        a, b = rng.normal(size=n1), rng.normal(shift, size=n2)
        if ties:
            a, b = np.round(a, 1), np.round(b, 1)
        d, p = stats.ks_2samp(a, b)
        ref = st.ks_2samp(a, b)
        assert d == pytest.approx(ref.statistic, abs=1e-12)
        assert abs(p - ref.pvalue) < 1e-6


def test_ks_2samp_on_adult_matches_scipy() -> None:
    data = adult()
    for column in ("age", "hours-per-week"):
        values = np.array(data[column], dtype=float)
        for a, b in [(values[:1500], values[1500:3000]), (values[:800], values[4000:4333])]:
            d, p = stats.ks_2samp(a, b, method="exact")
            ref = st.ks_2samp(a, b, method="exact")
            assert d == pytest.approx(ref.statistic, abs=1e-12)
            assert abs(p - ref.pvalue) < 1e-6


def test_ks_2samp_detects_real_shift() -> None:
    age = np.array(adult()["age"], dtype=float)
    _, p = stats.ks_2samp(age[:1000], age[1000:2000] + 5)
    assert p < 1e-6


def test_ks_asymp_is_the_limiting_kolmogorov_distribution() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=12_000), rng.normal(0.02, size=11_000)
    d, p = stats.ks_2samp(a, b)
    en = 12_000 * 11_000 / 23_000
    assert d == pytest.approx(st.ks_2samp(a, b).statistic, abs=1e-12)
    assert p == pytest.approx(st.kstwobign.sf(math.sqrt(en) * d), abs=1e-10)


def test_ks_2samp_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        stats.ks_2samp([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        stats.ks_2samp([float("nan")], [1.0])
    with pytest.raises(ValueError, match="method"):
        stats.ks_2samp([1.0], [1.0], method="approx")


def test_ks_from_histograms_statistic_and_pvalue() -> None:
    ref, cur = [10, 20, 30, 40], [40, 30, 20, 10]
    d, p = stats.ks_from_histograms(ref, cur)
    assert d == pytest.approx(0.4)  # cumulative shares 0.3 vs 0.7 after two bins
    assert p == pytest.approx(sp.kolmogorov(math.sqrt(50) * 0.4), abs=1e-10)


def test_kolmogorov_sf_matches_scipy() -> None:
    for z in np.linspace(0.0, 4.0, 401):
        assert stats.kolmogorov_sf(float(z)) == pytest.approx(sp.kolmogorov(z), abs=1e-12)


def test_gamma_q_matches_scipy() -> None:
    for a in (0.5, 1.0, 2.5, 7.0, 40.0, 300.0):
        for x in np.linspace(0.0, 600.0, 1201):
            assert abs(stats.gamma_q(a, float(x)) - sp.gammaincc(a, x)) < 1e-10
    with pytest.raises(ValueError, match="a > 0"):
        stats.gamma_q(0.0, 1.0)


@pytest.mark.parametrize("k", [2, 3, 6, 20])
def test_chi2_test_matches_scipy(k: int) -> None:
    rng = np.random.default_rng(k)
    for _ in range(20):
        ref, cur = rng.integers(0, 60, k), rng.integers(0, 60, k)
        ref[0] += 1
        cur[0] += 1
        statistic, p, dof = stats.chi2_test(ref, cur)
        expected = st.chi2_contingency(np.vstack([ref, cur])[:, (ref + cur) > 0])
        assert statistic == pytest.approx(expected.statistic, rel=1e-10, abs=1e-12)
        assert abs(p - expected.pvalue) < 1e-6
        assert dof == expected.dof


def test_chi2_test_drops_empty_columns_and_handles_one_column() -> None:
    with_zero = stats.chi2_test([10, 0, 5, 7], [3, 0, 9, 1])
    without = stats.chi2_test([10, 5, 7], [3, 9, 1])
    assert with_zero == pytest.approx(without)
    assert stats.chi2_test([5, 0], [7, 0]) == (0.0, 1.0, 0)


def test_chi2_on_adult_categories_matches_scipy() -> None:
    data = adult()
    for column in ("sex", "native-country"):
        cats = sorted(set(data[column]))
        ref = [data[column][:2500].count(c) for c in cats]
        cur = [data[column][2500:].count(c) for c in cats]
        statistic, p, _ = stats.chi2_test(ref, cur)
        table = np.array([ref, cur])
        expected = st.chi2_contingency(table[:, table.sum(axis=0) > 0])
        assert statistic == pytest.approx(expected.statistic, rel=1e-10)
        assert abs(p - expected.pvalue) < 1e-6


def test_js_distance_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    for k in (2, 5, 30):
        p, q = rng.integers(0, 40, k), rng.integers(0, 40, k)
        p[0], q[-1] = p[0] + 1, q[-1] + 1
        assert abs(stats.js_distance(p, q) - jensenshannon(p, q, base=2)) < 1e-12
        assert abs(stats.js_distance(p, q, base=None) - jensenshannon(p, q)) < 1e-12
    assert stats.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("a", "b"), [((30, 100), (20, 100)), ((0, 50), (20, 100)), ((7, 9), (1, 40)), ((5, 5), (3, 8))]
)
def test_intervals_match_statsmodels(a: tuple[int, int], b: tuple[int, int]) -> None:
    from statsmodels.stats.proportion import confint_proportions_2indep

    difference = confint_proportions_2indep(*a, *b, method="newcomb", compare="diff")
    assert stats.difference_interval(a, b) == pytest.approx(difference)
    method = "log-adjusted" if a[0] == 0 or b[0] == 0 else "log"
    ratio = confint_proportions_2indep(*a, *b, method=method, compare="ratio")
    assert stats.ratio_interval(a, b) == pytest.approx(ratio)


def test_what_np_unique_imports_on_first_use_is_imported_with_the_monitors() -> None:
    # np.unique imports numpy.ma on first use (~7 ms, GIL held): at start, not in a window.
    code = "import sys, guardproxy.app; assert 'numpy.ma' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
