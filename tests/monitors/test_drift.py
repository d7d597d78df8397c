"""Tests for references, drift monitors and the per-region drift bank."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.stats as st

from guardproxy.guards.exchange import Verdict
from guardproxy.monitors import stats
from guardproxy.monitors.bank import DriftBank
from guardproxy.monitors.drift import DriftMonitor, Reference, WindowResult
from guardproxy.monitors.modeldrift import INLINE_ROWS, ModelDrift
from guardproxy.policy.models import DriftSpec, DriftTests, JsSpec
from tests.factories import compiled_model, observation

DATA = Path(__file__).parent.parent / "data" / "adult_drift_sample.csv"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def adult_rows() -> list[dict[str, float | str]]:
    with DATA.open() as f:
        return [
            {"age": float(r["age"]), "hours-per-week": float(r["hours-per-week"]), "sex": r["sex"]}
            for r in csv.DictReader(f)
        ]


def test_numeric_reference_bins_from_quantiles() -> None:
    ref = Reference.from_values("x", "numeric", list(range(100)), bins=4)
    assert ref.edges == (25.0, 50.0, 75.0)
    assert ref.counts == (25.0, 25.0, 25.0, 25.0)
    assert list(ref.histogram([-1e9, 30.0, 1e9])) == [1.0, 1.0, 0.0, 1.0]


def test_numeric_reference_unique_edges_and_bounded_sample() -> None:
    values = [1.0] * 9000 + [2.0] * 1000 + ["bad", None, float("nan"), True]
    ref = Reference.from_values("x", "numeric", values, bins=10)
    assert ref.edges == (1.0, 2.0)
    assert ref.counts == (0.0, 9000.0, 1000.0)
    assert sum(ref.counts) == 10_000
    assert len(ref.sample) == 5000
    assert ref.sample.count(2.0) == pytest.approx(500, abs=2)


def test_categorical_reference_has_other_bucket() -> None:
    ref = Reference.from_values("sex", "categorical", ["m", "f", "f", None], bins=10)
    assert ref.categories == ("f", "m")
    assert ref.counts == (2.0, 1.0, 0.0)
    assert list(ref.histogram(["f", "x", "y"])) == [1.0, 0.0, 2.0]


def zipf_categories(rng: np.random.Generator, n: int, shuffled: bool = False) -> list[str]:
    """n draws of 5,000 categories, c0 the likeliest (shuffled: c0..c9 in reverse order)."""
    weights = 1 / np.arange(1, 5001)
    drawn = rng.choice(5000, n, p=weights / weights.sum())
    if shuffled:
        drawn = np.where(drawn < 10, 9 - drawn, drawn)
    return [f"c{v}" for v in drawn]


@pytest.mark.parametrize("traffic", ["uniform", "zipf"])
def test_many_categories_do_not_drift_against_themselves(traffic: str) -> None:
    rng = np.random.default_rng(5)

    def draw(n: int) -> list[str]:
        if traffic == "zipf":
            return zipf_categories(rng, n)
        return [f"c{v}" for v in rng.integers(0, 1000, n)]

    alarms = 0
    for _ in range(5):
        monitor = DriftMonitor(Reference.from_values("zip", "categorical", draw(1000)))
        alarms += sum(monitor.update_many(draw(1000))[0].drift_detected for _ in range(6))
    # Ranked on the counts they were compared with, the kept categories had alarmed all 30
    # windows of either (median PSI 0.50 uniform, 0.33 zipf; chi-square p < 0.001 uniform).
    assert alarms <= 1


def test_many_categories_keep_the_frequent_apart_and_see_them_move() -> None:
    rng = np.random.default_rng(6)
    ref = Reference.from_values("zip", "categorical", zipf_categories(rng, 1000))
    assert {"c0", "c1", "c2"} <= set(ref.categories)
    assert len(ref.categories) <= 100 and 400 < sum(ref.counts) < 600  # counted on the other half
    monitor = DriftMonitor(ref)
    assert monitor.update_many(zipf_categories(rng, 1000, shuffled=True))[0].alarms["chi2"]


def test_reference_needs_values() -> None:
    with pytest.raises(ValueError, match="no numeric reference values for signal 'age'"):
        Reference.from_values("age", "numeric", ["n/a"], bins=4)


def test_monitor_count_window_matches_scipy_and_counts_invalid() -> None:
    rng = np.random.default_rng(7)
    ref = Reference.from_values("score", "numeric", list(rng.normal(size=400)), bins=10)
    monitor = DriftMonitor(ref, DriftTests(js=JsSpec(alarm=0.1)), window=300, family_size=3)
    window = list(rng.normal(0.4, size=300))
    results = monitor.update_many([*window[:100], None, "x", *window[100:], 1.0])
    assert len(results) == 1
    result = results[0]
    assert (result.n, result.invalid) == (300, 2)
    _, p = st.ks_2samp(ref.sample, window)
    assert abs(result.values["ks_p"] - p) < 1e-6
    expected_psi = stats.psi(ref.counts, ref.histogram(window))
    assert result.values["psi"] == pytest.approx(expected_psi)
    assert result.alarms["ks"] == (p < 0.01 / 3)
    assert set(result.alarms) == {"psi", "ks", "js"}
    assert monitor.last is result
    assert monitor.invalid == 2


def test_monitor_no_drift_on_same_distribution() -> None:
    rng = np.random.default_rng(11)
    ref = Reference.from_values("score", "numeric", list(rng.uniform(size=2000)), bins=10)
    monitor = DriftMonitor(ref, window=1000)
    result = monitor.update_many(rng.uniform(size=1000))[0]
    assert not result.drift_detected
    assert not monitor.drift_detected
    assert result.values["psi"] < 0.05


def test_monitor_time_window_uses_clock() -> None:
    clock = FakeClock()
    ref = Reference.from_values("score", "numeric", [i / 10 for i in range(10)] * 10, bins=5)
    monitor = DriftMonitor(ref, window=10, window_seconds=60, clock=clock)
    assert monitor.update_many([0.1] * 50) == []  # the count does not close a time window
    clock.now = 59.0
    assert monitor.tick() == []
    clock.now = 60.0
    results = monitor.update_many([0.5])
    assert [r.n for r in results] == [50]
    assert results[0].at == 60.0
    clock.now = 120.0
    assert [r.n for r in monitor.tick()] == [1]


def test_categorical_monitor_uses_chi2_like_scipy() -> None:
    ref = Reference.from_values("sex", "categorical", ["f"] * 50 + ["m"] * 50, bins=10)
    monitor = DriftMonitor(ref, window=40)
    result = monitor.update_many(["f"] * 30 + ["m"] * 10)[0]
    expected = st.chi2_contingency(np.array([[50, 50], [30, 10]]))
    assert abs(result.values["chi2_p"] - expected.pvalue) < 1e-9
    assert "ks" not in result.values
    assert result.monitor_values()["drift.sex.chi2"] == result.values["chi2_p"]


def test_bank_warms_up_then_detects_real_drift_on_adult() -> None:
    spec = DriftSpec.model_validate(
        {
            "reference": {"warmup": 2000},
            "window": 1000,
            "signals": ["score", {"input": "age"}, {"input": "sex", "kind": "categorical"}],
        }
    )
    bank = DriftBank(spec, region="sg", group_key="sex")
    rows = adult_rows()
    for row in rows:
        row["score"] = float(row["hours-per-week"]) / 100
    assert bank.observe(rows[:2000]) == []  # "*" warmed up; per-sex monitors still warming
    same = bank.observe(rows[2000:3000])
    star = {r.signal: r for r in same if r.group == "*"}
    assert set(star) == {"score", "age", "sex"}
    assert all(r.n == 1000 for r in star.values())
    older = [{**r, "age": float(r["age"]) + 15} for r in rows[3000:4000]]
    drifted = {r.signal: r for r in bank.observe(older) if r.group == "*"}
    assert drifted["age"].alarms["ks"] and drifted["age"].alarms["psi"]
    assert not drifted["score"].drift_detected
    assert drifted["age"].region == "sg"
    assert {"drift.age.psi", "drift.age.ks"} <= set(drifted["age"].monitor_values())


def test_bank_skips_invalid_values_without_raising() -> None:
    spec = DriftSpec.model_validate({"reference": {"warmup": 10}, "window": 10})
    bank = DriftBank(spec)
    rows: list[dict[str, object]] = [{"score": "oops"}, {}, {"score": None}]
    rows += [{"score": i / 20} for i in range(20)]
    results: list[WindowResult] = bank.observe(rows)
    assert [r.n for r in results] == [10]
    assert bank.monitors[("*", "score")].invalid == 0  # invalid rows fell in the warm-up


def test_bank_uses_baseline_document() -> None:
    ref = Reference.from_values("score", "numeric", [i / 100 for i in range(100)], bins=4)
    doc = {"version": 1, "groups": {"*": {"score": ref.to_dict()}}}
    bank = DriftBank(DriftSpec.model_validate({"window": 10}), baseline=doc)
    results = bank.observe([{"score": 0.99}] * 10)
    assert len(results) == 1 and results[0].alarms["psi"]
    assert bank.monitors[("*", "score")].reference == ref


def test_a_baseline_reference_that_cannot_be_compared_with_is_refused() -> None:
    # A hand-edited file read after the policy loaded: refused with its reason, not binned.
    entry = {"kind": "numeric", "edges": [0.5, 0.2], "counts": [1, 1, 1]}
    with pytest.raises(ValueError, match="signal 'score' of group '\\*': edges must be finite"):
        Reference.from_baseline({"groups": {"*": {"score": entry}}}, "score")


def test_docstring_examples() -> None:
    import doctest

    from guardproxy.monitors import drift

    assert doctest.testmod(drift).failed == 0


def bank_of(clock: FakeClock | None = None, **spec: object) -> DriftBank:
    """A bank on the score and a categorical sex, 500 rows of warm-up and per window."""
    base: dict[str, object] = {
        "reference": {"warmup": 500},
        "window": 500,
        "signals": ["score", {"input": "sex", "kind": "categorical"}],
    }
    return DriftBank(DriftSpec.model_validate({**base, **spec}), clock=clock or FakeClock())


def shifted_window(**spec: object) -> dict[str, WindowResult]:
    """The first window after warm-up, scores and sexes both moved a little, by signal."""
    rng = np.random.default_rng(5)
    bank = bank_of(**spec)
    reference = [{"score": s, "sex": "f" if s < 0.5 else "m"} for s in rng.uniform(size=500)]
    assert bank.observe(reference) == []
    window = [{"score": s, "sex": "f" if s < 0.4 else "m"} for s in rng.uniform(0.05, 1, 500)]
    return {r.signal: r for r in bank.observe(window) if r.group == "*"}


def test_the_policy_chooses_the_drift_tests_and_their_bounds() -> None:
    off = {"psi": None, "ks": None, "js": None, "chi2": None}
    assert all(r.values == {} for r in shifted_window(tests=off).values())
    only_js = shifted_window(tests={**off, "js": {"alarm": 0.5}})
    assert set(only_js["score"].values) == set(only_js["sex"].values) == {"js"}
    measured = shifted_window(tests={"js": {"alarm": 1.0}}, correction="none")
    score, sex = measured["score"].values, measured["sex"].values
    psi, js, ks_p, chi2_p = score["psi"], score["js"], score["ks_p"], sex["chi2_p"]
    assert 0 < psi < 1 and 0 < js < 1 and 0 < ks_p < 0.5 and 0 < chi2_p < 0.5

    def bounds(side: float) -> dict[str, object]:
        return {
            "psi": {"warn": psi * side, "alarm": psi * side},
            "js": {"alarm": js * side},
            "ks": {"p_value": ks_p / side},
            "chi2": {"p_value": chi2_p / side},
        }

    strict = shifted_window(tests=bounds(0.9), correction="none")
    lax = shifted_window(tests=bounds(1.1), correction="none")
    assert strict["score"].alarms == {"psi": True, "js": True, "ks": True} and strict["score"].warn
    assert lax["score"].alarms == {"psi": False, "js": False, "ks": False} and not lax["score"].warn
    assert strict["sex"].alarms["chi2"] and not lax["sex"].alarms["chi2"]


def test_bonferroni_divides_the_p_value_by_the_signals_unless_the_policy_says_none() -> None:
    ks_p = shifted_window(correction="none")["score"].values["ks_p"]
    tests = {"ks": {"p_value": ks_p * 1.5}}  # above p alone, below it once halved for 2 signals
    assert shifted_window(tests=tests, correction="none")["score"].alarms["ks"]
    assert not shifted_window(tests=tests, correction="bonferroni")["score"].alarms["ks"]


def test_a_warm_up_reference_has_the_policys_number_of_bins() -> None:
    bank = bank_of(bins=4, signals=["score"], reference={"warmup": 100})
    bank.observe([{"score": i / 100} for i in range(100)])
    assert bank.monitors[("*", "score")].reference.counts == (25.0, 25.0, 25.0, 25.0)


def test_a_time_window_from_the_policy_closes_on_the_clock_not_the_count() -> None:
    clock = FakeClock()
    bank = bank_of(clock, window=10, window_seconds="60s", reference={"warmup": 10})
    bank.observe([{"score": i / 10, "sex": "f"} for i in range(10)])
    assert bank.observe([{"score": 0.5, "sex": "f"}] * 50) == []
    clock.now = 60.0
    assert [(r.signal, r.n) for r in bank.observe([])] == [("score", 50), ("sex", 50)]


def test_a_bank_is_due_exactly_when_a_feed_completes_its_reference_or_a_window() -> None:
    clock = FakeClock()
    bank = bank_of(clock, window=10, reference={"warmup": 10})
    rows = [{"score": i / 10, "sex": "f"} for i in range(10)]
    assert not bank.due(9) and bank.due(10)  # the reference
    bank.observe(rows[:9])
    assert not bank.due(0) and bank.due(1)
    assert bank.observe(rows[9:]) == [] and not bank.due(9) and bank.due(10)  # a window
    assert [r.n for r in bank.observe(rows)] == [10, 10]
    timed = bank_of(clock, window=10, window_seconds="60s", reference={"warmup": 10})
    timed.observe(rows + rows[:1])
    assert not timed.due(100)
    clock.now = 60.0
    assert timed.due(0)


def test_columns_feed_a_bank_as_the_same_rows_would() -> None:
    rng = np.random.default_rng(7)
    rows: list[dict[str, object]] = [
        {"score": float(s), "sex": "f" if s < 0.5 else "m"} for s in rng.uniform(size=1200)
    ]
    rows[3] = {"score": "oops"}  # no sex, and an invalid score
    rows[700]["score"] = float("nan")
    by_rows, by_columns = bank_of(), bank_of()
    columns = {
        "score": [row.get("score") for row in rows],
        "sex": [row.get("sex") for row in rows],
    }
    expected = by_rows.observe(rows)
    got = by_columns.observe_columns(columns, len(rows))
    assert [(r.signal, r.n, r.invalid, r.values) for r in got] == [
        (r.signal, r.n, r.invalid, r.values) for r in expected
    ]
    assert by_columns.observe_columns({}, 0) == by_rows.observe([]) == []
    assert by_columns.observe_columns({"score": [0.5] * 3}, 3) == []  # sex: None, invalid
    by_rows.observe([{"score": 0.5}] * 3)
    assert by_columns.monitors[("*", "sex")].invalid == by_rows.monitors[("*", "sex")].invalid


def test_a_models_columns_are_its_rows_read_by_signal() -> None:
    drift = {"signals": ["score", {"input": "age"}, {"input": "sex", "kind": "categorical"}]}
    model = compiled_model(drift=drift)
    monitors = ModelDrift(model.spec, ("eu", "m", ""), FakeClock())
    two = (Verdict("a", 0.25, 0.5, 0), Verdict("b", 0.75, 0.5, 1))
    observations = [
        observation(model, "r1", two, features=((30, 40), ("f", "m"))),
        observation(model, "r2", two, features=((50,),)),  # a short input, a missing one
        observation(model, "r3", two[:1], features=((60, 70), ("m", "f"))),  # longer: cut
        observation(model, "r4", ()),
    ]
    rows = [row for ob in observations for row in monitors.rows(ob)]
    columns = monitors.columns(observations)
    assert columns == {s: [row.get(s) for row in rows] for s in ("score", "age", "sex")}
    assert columns["age"] == [30, 40, 50, None, 60]


def test_a_model_feeds_many_rows_at_once_off_the_loop_even_with_no_window_due() -> None:
    drift = {"signals": ["score"], "reference": {"warmup": 10}, "window": 10**6}
    model = compiled_model(drift=drift)
    monitors = ModelDrift(model.spec, ("eu", "m", ""), FakeClock())
    monitors.observe([observation(model, "r", (Verdict("a", 0.5, 0.5, 1),) * 10)])
    one = Verdict("a", 0.5, 0.5, 1)
    assert not monitors.due([observation(model, "r", (one,) * INLINE_ROWS)])
    assert monitors.due([observation(model, "r", (one,) * (INLINE_ROWS + 1))])
