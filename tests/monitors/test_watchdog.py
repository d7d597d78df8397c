"""Watchdog: signals read from exchanges, drift windows to the breaker, fairness windows, pauses.

The Adult rows are the demo's bundled subset (guardproxy/demo/data, UCI Adult, CC BY 4.0),
scored by the demo model exactly as the demo server scores them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import yaml
from multidict import CIMultiDict, CIMultiDictProxy
from pytest import approx

from guardproxy.breaker.board import BreakerBoard
from guardproxy.demo.model import FEATURES, adult_rows, load_model
from guardproxy.demo.server import v2_request
from guardproxy.guards.exchange import Exchange, Verdict, dumps
from guardproxy.monitors.drift import WindowResult
from guardproxy.monitors.fairness import fairness_report
from guardproxy.monitors.watchdog import FairnessWindows, Watchdog, counts_of, rounds
from guardproxy.policy.models import Policy
from guardproxy.policy.table import CompiledPolicy, PolicyTable, builtin_table, compile_policy
from guardproxy.policy.thresholds import Snapshot
from guardproxy.state.counts import GroupCounts

ROWS = list(adult_rows())
MODEL = load_model()
COUNTRY = "native-country"
POLICY = """
region: default
groups: {attribute: {input: sex}, values: [Female, Male]}
drift:
  reference: {warmup: 1000}
  window: 200
  signals: [score, {input: age}, {input: native-country, kind: categorical}]
  tests: {psi: {warn: 0.1, alarm: 0.25}, ks: {p_value: 0.01}, chi2: {p_value: 0.01}}
breaker:
  trip:
    - {when: drift.age.psi, above: 0.25, windows: 2}
    - {when: drift.score.psi, above: 0.25, windows: 2}
    - {when: drift.native-country.chi2, below: 0.001, windows: 2}
  open: {action: reject}
"""


def compiled(text: str = POLICY) -> CompiledPolicy:
    """A compiled policy from YAML text."""
    return compile_policy(Policy.model_validate(yaml.safe_load(text)))


def exchange(rows: Sequence[dict[str, Any]], flags: Sequence[str] = ()) -> Exchange:
    """A finished exchange as the proxy hands it over: v2 request, one verdict per row."""
    body = dumps(v2_request(list(rows), (*FEATURES, COUNTRY)))
    ex = Exchange("r", "default", "POST", "/v2/models/adult/infer",
                  CIMultiDictProxy(CIMultiDict[str]()), body, 0.0)  # fmt: skip
    ex.status, ex.flags = 200, list(flags)
    for row in rows:
        score = MODEL.score(row)
        ex.verdicts.append(Verdict(row["sex"], score, 0.5, int(score >= 0.5)))
    return ex


def batches(rows: Sequence[dict[str, Any]], per_request: int = 10, per_batch: int = 50):  # type: ignore[no-untyped-def]
    """Rows as requests of `per_request` rows, batches of `per_batch` requests."""
    requests = [exchange(rows[i : i + per_request]) for i in range(0, len(rows), per_request)]
    for i in range(0, len(requests), per_batch):
        yield requests[i : i + per_batch]


class Drift:
    """Telemetry that keeps every drift statistic, by (signal, test)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[float]] = {}

    def record_drift(self, region: str, signal: str, test: str, value: float) -> None:
        self.values.setdefault((signal, test), []).append(value)


def setup(text: str = POLICY, threaded: bool = False) -> tuple[Watchdog, BreakerBoard, Drift]:
    """A watchdog on a one-region table, as the runtime composes it."""
    policy = compiled(text)
    board = BreakerBoard(Snapshot(PolicyTable({"default": policy}, "default")))
    drift = Drift()
    return Watchdog(board, telemetry=drift, threaded=threaded), board, drift


async def feed(watchdog: Watchdog, rows: Sequence[dict[str, Any]], policy: CompiledPolicy) -> None:
    """Hand rows to the watchdog as the monitor worker would."""
    for batch in batches(rows):
        pending = watchdog.consume([(ex, policy) for ex in batch])
        if pending is not None:
            await pending


def shifted(rows: Sequence[dict[str, Any]], years: int) -> list[dict[str, Any]]:
    """The rows with everyone `years` older."""
    return [{**row, "age": str(int(row["age"]) + years)} for row in rows]


async def test_rows_carry_score_and_inputs_and_a_bad_request_counts_invalid() -> None:
    watchdog, board, _ = setup()
    policy = board.policies.current.default
    drift = watchdog._region(policy)
    assert drift is not None
    ex = exchange(ROWS[:3])
    rows = drift.rows(ex)
    assert [r["age"] for r in rows] == [float(r["age"]) for r in ROWS[:3]]
    assert rows[0]["native-country"] == ROWS[0][COUNTRY]
    assert rows[0]["score"] == ex.verdicts[0].score
    broken = exchange(ROWS[:2])
    broken.body = b"{not json"
    assert [r["age"] for r in drift.rows(broken)] == [None, None]
    assert drift.errors == 2  # both watched inputs unreadable


async def test_age_shift_opens_the_breaker_after_two_windows() -> None:
    watchdog, board, _ = setup()
    policy = board.policies.current.default
    await feed(watchdog, ROWS[:1400], policy)
    breaker = board.breaker("default")
    assert breaker is not None and breaker.state_name == "closed"
    await feed(watchdog, shifted(ROWS[1400:1800], 10), policy)
    assert breaker.state_name == "open"
    assert "drift.age.psi>0.25x2" in breaker.reason
    assert watchdog.status()["regions"]["default"]["last"]["drift.age.psi"] > 0.25


async def test_fallback_answers_are_not_monitored_and_policy_change_rebuilds() -> None:
    watchdog, board, _ = setup()
    policy = board.policies.current.default
    assert watchdog.consume([(exchange(ROWS[:5], ["breaker:fallback"]), policy)]) is None
    await feed(watchdog, ROWS[:100], policy)
    first = watchdog.drift["default"]
    assert watchdog.status()["regions"]["default"]["warming"]["*/age"] == 100
    await feed(watchdog, ROWS[:10], compiled(POLICY))  # same drift spec: same bank
    assert watchdog.drift["default"] is first
    await feed(watchdog, ROWS[:10], compiled(POLICY.replace("window: 200", "window: 300")))
    assert watchdog.drift["default"] is not first


def test_rounds_merge_the_nth_window_of_each_signal() -> None:
    def result(signal: str, psi: float, group: str = "*") -> WindowResult:
        return WindowResult(signal, group, 200, 0, {"psi": psi}, {"psi": False})

    merged = rounds([result("age", 0.1), result("score", 0.2), result("age", 0.3),
                     result("age", 0.9, group="Male")])  # fmt: skip
    assert merged == [{"drift.age.psi": 0.1, "drift.score.psi": 0.2}, {"drift.age.psi": 0.3}]


def test_counts_survive_the_report_round_trip() -> None:
    counts = GroupCounts(decisions=1000, selected=137, tp=51, fp=12, tn=301, fn=40)
    assert counts_of(fairness_report({"a": counts})["groups"]["a"]) == counts


def test_fairness_windows_close_on_decisions_and_on_labels() -> None:
    groups = {"attribute": {"header": "X-G", "trusted": True}, "values": ["f", "m"]}
    policy = Policy.model_validate({"region": "r", "groups": groups, "fairness": {"window": 100}})
    windows = FairnessWindows(policy)

    def report(f: GroupCounts, m: GroupCounts) -> dict[str, Any]:
        return fairness_report({"f": f, "m": m, "other": GroupCounts(500, 500)})

    assert windows.update(report(GroupCounts(10, 5), GroupCounts(10, 5))) == []
    out = windows.update(report(GroupCounts(60, 10), GroupCounts(60, 25)))
    assert out == [
        {"fairness.disparate_impact": 0.25, "fairness.demographic_parity_difference": approx(0.3)}
    ]
    labeled = windows.update(
        report(GroupCounts(60, 10, 5, 5, 40, 10), GroupCounts(60, 25, 20, 5, 25, 0))
    )
    assert labeled[0]["fairness.equal_opportunity_difference"] == 1 - 5 / 15


def bootstrap(windows: int, seed: int) -> list[dict[str, Any]]:
    """warm-up plus `windows` windows of 200 rows, resampled with replacement."""
    rng = random.Random(seed)
    return rng.choices(ROWS, k=1000 + windows * 200)


async def test_iid_replay_never_opens_and_false_alarm_rates_are_low() -> None:
    watchdog, board, drift = setup()
    await feed(watchdog, bootstrap(120, seed=7), board.policies.current.default)
    breaker = board.breaker("default")
    assert breaker is not None and breaker.state_name == "closed"
    assert board.transitions == {}
    rates = alarm_rates(drift, family=3)
    print("false-alarm rate per window (window 200, 120 windows):", rates)
    assert len(drift.values[("age", "psi")]) == 120
    # PSI over ~40 mostly rare countries is biased upward in small windows; chi2 is not.
    assert rates.pop("native-country.psi") > 0.1
    assert all(rate <= 0.02 for rate in rates.values())


def alarm_rates(drift: Drift, family: int) -> dict[str, float]:
    """Share of windows crossing psi >= 0.25 or a Bonferroni p-value < 0.01 / family."""
    rates: dict[str, float] = {}
    for (signal, test), values in sorted(drift.values.items()):
        if test == "psi":
            rates[f"{signal}.psi"] = sum(v >= 0.25 for v in values) / len(values)
        elif test in ("ks_p", "chi2_p"):
            rates[f"{signal}.{test}"] = sum(v < 0.01 / family for v in values) / len(values)
    return rates


async def test_default_policy_does_not_false_alarm_on_iid_traffic() -> None:
    table = builtin_table()
    board = BreakerBoard(Snapshot(table))
    drift = Drift()
    watchdog = Watchdog(board, telemetry=drift, threaded=False)
    spec = table.default.policy.drift
    assert spec is not None
    rng = random.Random(11)
    rows = rng.choices(ROWS, k=spec.reference.warmup + 100 * spec.window)
    await feed(watchdog, rows, table.default)
    assert len(drift.values[("score", "psi")]) == 100
    assert board.breaker("default").state_name == "closed"  # type: ignore[union-attr]
    rates = alarm_rates(drift, family=len(spec.signals))
    print(f"default policy false-alarm rate per window ({spec.window} rows):", rates)
    assert all(rate <= 0.02 for rate in rates.values())


async def test_window_work_runs_off_the_loop_and_the_loop_keeps_ticking() -> None:
    # The costliest exact KS the monitors allow: a 5,000-value reference sample, 1,000 per window.
    text = POLICY.replace("window: 200", "window: 1000").replace("warmup: 1000", "warmup: 5000")
    watchdog, board, _ = setup(text, threaded=True)
    policy = board.policies.current.default
    rows = random.Random(3).choices(ROWS, k=10_000)
    prepared = list(batches(rows, per_batch=100))
    worst = 0.0
    stop = asyncio.Event()

    async def lag() -> None:
        nonlocal worst
        while not stop.is_set():
            began = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - began - 0.001)

    probe = asyncio.create_task(lag())
    for batch in prepared:
        pending = watchdog.consume([(ex, policy) for ex in batch])
        assert pending is not None
        await pending
    stop.set()
    await probe
    print(f"worst event-loop pause {worst * 1000:.2f} ms; "
          f"longest window computation {watchdog.max_compute * 1000:.1f} ms")  # fmt: skip
    assert watchdog.status()["regions"]["default"]["windows"] >= 15
    assert worst < 0.1  # unthreaded, the same windows hold the loop for ~330 ms


class Counts:
    """A fairness source with settable cumulative counts, as the engine reports them."""

    def __init__(self) -> None:
        self.groups = {"Female": GroupCounts(), "Male": GroupCounts()}

    def report(self, region: str) -> dict[str, Any]:
        return fairness_report(self.groups)


async def test_fairness_windows_from_the_engine_trip_disparate_impact() -> None:
    text = """
region: default
groups: {attribute: {input: sex}, values: [Female, Male]}
fairness: {window: 100}
breaker:
  trip: [{when: fairness.disparate_impact, below: 0.8, windows: 2}]
"""
    source = Counts()
    board = BreakerBoard(Snapshot(PolicyTable({"default": compiled(text)}, "default")))
    watchdog = Watchdog(board, fairness=source, threaded=False)
    board.tickers.append(watchdog.tick)
    board.tick()  # first look: the counts so far are the starting mark
    for _ in range(2):
        source.groups["Female"].decisions += 50
        source.groups["Female"].selected += 5
        source.groups["Male"].decisions += 50
        source.groups["Male"].selected += 20
        board.tick()
    breaker = board.breaker("default")
    assert breaker is not None and breaker.state_name == "open"
    assert "fairness.disparate_impact<0.8x2 (0.25)" in breaker.reason
    assert watchdog.status()["regions"]["default"]["last"]["fairness.disparate_impact"] == 0.25
