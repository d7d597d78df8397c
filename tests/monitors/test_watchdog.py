"""Watchdog: signals of observations, drift windows to each model's breaker, fairness windows.

The Adult rows are the demo's bundled subset (guardproxy/demo/data, UCI Adult, CC BY 4.0),
scored by the demo model exactly as the demo server scores them.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pytest import approx

from guardproxy.breaker.board import BreakerBoard
from guardproxy.breaker.state import HALF_OPEN
from guardproxy.demo.model import adult_rows, load_model
from guardproxy.guards.exchange import Verdict
from guardproxy.hotpath.observation import Observation
from guardproxy.monitors.baseline import baseline_command
from guardproxy.monitors.drift import WindowResult
from guardproxy.monitors.modeldrift import ModelDrift, Row
from guardproxy.monitors.watchdog import FairnessWindows, Watchdog, rounds
from guardproxy.policy.models import Policy
from guardproxy.policy.table import CompiledModel, PolicyTable, builtin_table, compile_policy
from guardproxy.policy.thresholds import ModelKey, Snapshot
from guardproxy.state.counts import GroupCounts
from guardproxy.testing import eventually
from tests.factories import observation

DATA = Path(__file__).parent.parent / "data" / "adult_drift_sample.csv"
ROWS = list(adult_rows())
MODEL = load_model()
COUNTRY = "native-country"
KEY = ("default", "adult", "")
POLICY = """
region: default
models: [{name: adult}]
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


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def table_of(text: str = POLICY) -> PolicyTable:
    """A one-region table from YAML text."""
    policy = compile_policy(Policy.model_validate(yaml.safe_load(text)))
    return PolicyTable({policy.region: policy}, policy.region)


def adult(table: PolicyTable) -> CompiledModel:
    """The table's adult model."""
    model = table.default.model("adult")
    assert model is not None
    return model


def observed(model: CompiledModel, rows: Sequence[dict[str, Any]], **kwargs: Any) -> Observation:
    """An observation as the proxy hands it over: a verdict and the watched inputs per row."""
    verdicts = []
    for row in rows:
        score = MODEL.score(row)
        verdicts.append(Verdict(row["sex"], score, 0.5, int(score >= 0.5)))
    features = tuple(
        tuple(number(row.get(s.input)) if s.kind == "numeric" else row.get(s.input) for row in rows)
        for s in model.spec.signal_specs()
    )
    return observation(model, "r", tuple(verdicts), features=features, **kwargs)


def number(value: object) -> float | None:
    """A row's numeric text as a number (None when the row has no such column)."""
    return None if value is None else float(str(value))


def batches(model: CompiledModel, rows: Sequence[dict[str, Any]], per_request: int = 10,
            per_batch: int = 50, **kwargs: Any):  # type: ignore[no-untyped-def]  # fmt: skip
    """Rows as requests of `per_request` rows, batches of `per_batch` requests."""
    requests = [
        observed(model, rows[i : i + per_request], **kwargs)
        for i in range(0, len(rows), per_request)
    ]
    for i in range(0, len(requests), per_batch):
        yield requests[i : i + per_batch]


class Drift:
    """Telemetry that keeps every drift statistic, by (signal, test)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[float]] = {}
        self.forgotten: list[ModelKey] = []

    def record_drift(self, key: ModelKey, signal: str, test: str, value: float) -> None:
        self.values.setdefault((signal, test), []).append(value)

    def forget_drift(self, key: ModelKey) -> None:
        self.forgotten.append(key)


def setup(text: str = POLICY, threaded: bool = False) -> tuple[Watchdog, BreakerBoard, Drift]:
    """A watchdog on a one-region table, as the runtime composes it."""
    board = BreakerBoard(Snapshot(table_of(text)))
    drift = Drift()
    return Watchdog(board, telemetry=drift, threaded=threaded), board, drift


async def feed(
    watchdog: Watchdog, rows: Sequence[dict[str, Any]], model: CompiledModel, **kwargs: Any
) -> None:
    """Hand rows to the watchdog as the monitor worker would."""
    for batch in batches(model, rows, **kwargs):
        pending = watchdog.consume(batch)
        if pending is not None:
            await pending


def shifted(rows: Sequence[dict[str, Any]], years: int) -> list[dict[str, Any]]:
    """The rows with everyone `years` older."""
    return [{**row, "age": str(int(row["age"]) + years)} for row in rows]


async def test_rows_carry_score_and_inputs() -> None:
    watchdog, board, _ = setup()
    model = adult(board.policies.current)
    drift = watchdog._drift_of(model, "")
    assert drift is not None
    ob = observed(model, ROWS[:3])
    rows = drift.rows(ob)
    assert [r["age"] for r in rows] == [float(r["age"]) for r in ROWS[:3]]
    assert rows[0]["native-country"] == ROWS[0][COUNTRY]
    assert rows[0]["score"] == ob.verdicts[0].score


async def test_age_shift_opens_the_models_breaker_after_two_windows() -> None:
    watchdog, board, _ = setup()
    model = adult(board.policies.current)
    await feed(watchdog, ROWS[:1400], model)
    breaker = board.breaker("default", "adult")
    assert breaker is not None and breaker.state_name == "closed"
    await feed(watchdog, shifted(ROWS[1400:1800], 10), model)
    assert breaker.state_name == "open"
    assert "drift.age.psi>0.25x2" in breaker.reason
    status = watchdog.status()["models"]["default|adult|"]
    assert status["last"]["drift.age.psi"] > 0.25
    assert status["signals"]["age"]["alarms"]["psi"] and status["signals"]["age"]["warn"]


async def test_fallback_answers_are_not_monitored_and_policy_change_rebuilds() -> None:
    watchdog, board, _ = setup()
    model = adult(board.policies.current)
    assert watchdog.consume([observed(model, ROWS[:5], fallback=True)]) is None
    await feed(watchdog, ROWS[:100], model)
    first = watchdog.drift[KEY]
    assert watchdog.status()["models"]["default|adult|"]["warming"]["age"] == 100
    await feed(watchdog, ROWS[:10], adult(table_of()))  # same drift spec: same bank
    assert watchdog.drift[KEY] is first
    await feed(watchdog, ROWS[:10], adult(table_of(POLICY.replace("window: 200", "window: 300"))))
    assert watchdog.drift[KEY] is not first


async def test_a_new_model_version_starts_new_references_and_is_an_event() -> None:
    watchdog, board, _ = setup()
    model = adult(board.policies.current)
    await feed(watchdog, ROWS[:1200], model, version="1")
    assert watchdog.drift[("default", "adult", "1")].bank.monitors
    await feed(watchdog, ROWS[:50], model, version="2")
    fresh = watchdog.drift[("default", "adult", "2")]
    assert not fresh.bank.monitors and fresh.warming()["age"] == 50
    events = watchdog.status()["events"]
    assert events[-1]["event"] == "new version" and events[-1]["model"] == "default|adult|2"


async def test_versions_kept_per_model_are_bounded() -> None:
    watchdog, board, telemetry = setup()
    model = adult(board.policies.current)
    for version in range(20):
        await feed(watchdog, ROWS[:10], model, version=str(version))
    assert len(watchdog.drift) <= 8 and ("default", "adult", "19") in watchdog.drift
    # so are their drift gauges: a version dropped here is dropped from the metrics
    assert set(telemetry.forgotten) == {("default", "adult", str(v)) for v in range(12)}


async def test_an_input_no_request_carries_is_reported_after_a_window() -> None:
    text = POLICY.replace("{input: age}", "{input: agee}").replace(
        "drift.age.psi", "drift.agee.psi"
    )
    watchdog, board, _ = setup(text)
    model = adult(board.policies.current)
    await feed(watchdog, ROWS[:100], model)
    assert watchdog.status()["models"]["default|adult|"]["missing_inputs"] == []
    await feed(watchdog, ROWS[:150], model)
    assert watchdog.status()["models"]["default|adult|"]["missing_inputs"] == ["agee"]


def test_rounds_merge_the_nth_window_of_each_signal() -> None:
    def result(signal: str, psi: float, group: str = "*") -> WindowResult:
        return WindowResult(signal, group, 200, 0, {"psi": psi}, {"psi": False})

    merged = rounds([result("age", 0.1), result("score", 0.2), result("age", 0.3),
                     result("age", 0.9, group="Male")])  # fmt: skip
    assert merged == [{"drift.age.psi": 0.1, "drift.score.psi": 0.2}, {"drift.age.psi": 0.3}]


FAIRNESS = """
region: default
models: [{name: adult}]
groups: {attribute: {input: sex}, values: [f, m]}
fairness: {window: 100}
breaker:
  trip: [{when: fairness.disparate_impact, below: 0.8, windows: 2}]
"""


def decisions(group: str, n: int, selected: int) -> tuple[Verdict, ...]:
    """n verdicts of one group, the first `selected` of them positive."""
    return tuple(Verdict(group, 0.5, 0.5, int(i < selected)) for i in range(n))


def test_fairness_windows_close_on_decisions_and_on_labels() -> None:
    model = adult(table_of(FAIRNESS))
    windows = FairnessWindows(model.spec)
    assert windows.rows_per_request == 5  # window 100 / min_calls 20
    undeclared = observation(model, "o", decisions("other", 500, 500))
    assert windows.decide(undeclared) is None  # not counted
    assert windows.decide(observation(model, "f", decisions("f", 50, 5))) is None
    out = windows.decide(observation(model, "m", decisions("m", 50, 20)))
    assert out == {
        "fairness.disparate_impact": 0.25,
        "fairness.demographic_parity_difference": approx(0.3),
    }
    assert windows.decisions == 0  # the next window starts empty

    def report(f: GroupCounts, m: GroupCounts) -> dict[str, GroupCounts]:
        return {"f": f, "m": m, "other": GroupCounts(500, 500, 500)}

    assert windows.update(report(GroupCounts(10, 5), GroupCounts(10, 5))) is None  # the mark
    labeled = windows.update(
        report(GroupCounts(60, 10, 5, 5, 40, 10), GroupCounts(60, 25, 20, 5, 25, 0))
    )
    assert labeled is not None
    assert labeled["fairness.equal_opportunity_difference"] == 1 - 5 / 15


def bootstrap(windows: int, seed: int) -> list[dict[str, Any]]:
    """warm-up plus `windows` windows of 200 rows, resampled with replacement."""
    rng = random.Random(seed)
    return rng.choices(ROWS, k=1000 + windows * 200)


async def test_iid_replay_never_opens_and_false_alarm_rates_are_low() -> None:
    watchdog, board, drift = setup()
    await feed(watchdog, bootstrap(120, seed=7), adult(board.policies.current))
    breaker = board.breaker("default", "adult")
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
    model = adult(table)
    spec = model.spec.drift
    assert spec is not None
    rng = random.Random(11)
    rows = rng.choices(ROWS, k=spec.reference.warmup + 100 * spec.window)
    await feed(watchdog, rows, model)
    assert len(drift.values[("score", "psi")]) == 100
    assert board.breaker("default", "adult").state_name == "closed"  # type: ignore[union-attr]
    rates = alarm_rates(drift, family=len(spec.signals))
    print(f"default policy false-alarm rate per window ({spec.window} rows):", rates)
    assert all(rate <= 0.02 for rate in rates.values())


async def test_window_work_runs_off_the_loop_and_the_loop_keeps_ticking() -> None:
    # The costliest exact KS the monitors allow: a 5,000-value reference sample, 1,000 per window.
    text = POLICY.replace("window: 200", "window: 1000").replace("warmup: 1000", "warmup: 5000")
    watchdog, board, _ = setup(text, threaded=True)
    rows = random.Random(3).choices(ROWS, k=10_000)
    prepared = list(batches(adult(board.policies.current), rows, per_batch=100))
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
        pending = watchdog.consume(batch)
        assert pending is not None
        await pending
    stop.set()
    await probe
    print(f"worst event-loop pause {worst * 1000:.2f} ms; "
          f"longest window computation {watchdog.max_compute * 1000:.1f} ms")  # fmt: skip
    assert watchdog.status()["models"]["default|adult|"]["windows"] >= 15
    assert worst < 0.1  # unthreaded, the same windows hold the loop for ~330 ms


async def test_a_half_open_probe_window_is_tested_off_the_loop(monkeypatch: Any) -> None:
    # A thousand probes against a 5,000-value reference sample, on people 30 years older:
    # their exact KS, on the loop, held it ~0.9 s.
    text = POLICY.replace("warmup: 1000", "warmup: 5000").replace(
        "open: {action: reject}", "open: {action: reject}\n  half_open: {probes: 1000}"
    )
    watchdog, board, _ = setup(text, threaded=True)
    model = adult(board.policies.current)
    rng = random.Random(5)
    await feed(watchdog, rng.choices(ROWS, k=5000), model)
    breaker = board.breaker("default", "adult")
    assert breaker is not None
    breaker.transition(HALF_OPEN, "cooldown elapsed")
    on_loop: list[bool] = []
    window = ModelDrift.probe_window

    def recording(drift: ModelDrift, rows: list[Row]) -> dict[str, float]:
        on_loop.append(threading.current_thread() is threading.main_thread())
        return window(drift, rows)

    monkeypatch.setattr(ModelDrift, "probe_window", recording)
    probes = shifted(rng.choices(ROWS, k=1000), 30)
    await feed(watchdog, probes, model, per_request=1, per_batch=100, probe=True)
    assert breaker.state_name == "open" and "unhealthy window in half-open" in breaker.reason
    assert on_loop == [False]


async def test_only_batches_that_close_a_window_leave_the_loop(monkeypatch: Any) -> None:
    watchdog, board, _ = setup(threaded=True)
    ran: list[tuple[bool, int]] = []  # (on the loop's thread, windows completed)
    observe = ModelDrift.observe

    def recording(drift: ModelDrift, observations: Sequence[Observation]) -> list[WindowResult]:
        results = observe(drift, observations)
        ran.append((threading.current_thread() is threading.main_thread(), len(results)))
        return results

    monkeypatch.setattr(ModelDrift, "observe", recording)
    rows = random.Random(4).choices(ROWS, k=1600)  # warm-up of 1,000 then windows of 200
    for batch in batches(adult(board.policies.current), rows, per_request=1, per_batch=50):
        pending = watchdog.consume(batch)
        assert pending is not None
        await pending
    inline = [windows for on_loop, windows in ran if on_loop]
    assert len(inline) == 32 - 1 - 3  # all but the one completing the reference, and 3 windows
    assert sum(inline) == 0 and sum(w for _, w in ran) == 3 * 3  # three signals


async def test_a_time_window_closed_by_a_tick_and_a_batch_are_never_computed_at_once(
    monkeypatch: Any,
) -> None:
    text = POLICY.replace("window: 200", "window: 200\n  window_seconds: 10s")
    clock = FakeClock()
    watchdog, board, _ = setup(text, threaded=True)
    watchdog.clock = clock
    model = adult(board.policies.current)
    rows = random.Random(6).choices(ROWS, k=1200)
    await feed(watchdog, rows[:1000], model)  # the references
    observe = ModelDrift.observe
    inside, most = 0, 0
    lock = threading.Lock()
    second, release = threading.Event(), threading.Event()

    def held(drift: ModelDrift, observations: Sequence[Observation]) -> list[WindowResult]:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
            if inside == 2:
                second.set()
        if threading.current_thread() is not threading.main_thread():
            release.wait(10)  # the tick's window stays in its thread until the test says
        try:
            return observe(drift, observations)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(ModelDrift, "observe", held)
    await feed(watchdog, rows[1000:1100], model)
    clock.now += 11
    watchdog.tick()  # closes the time window in a thread
    await eventually(lambda: inside == 1)
    batch = next(batches(model, rows[1100:1200], per_batch=10))
    pending = watchdog.consume(batch)  # finds the same window due
    assert pending is not None
    task = asyncio.ensure_future(pending)
    overlapped = await asyncio.to_thread(second.wait, 1.0)
    release.set()
    await task
    await asyncio.gather(*watchdog._tasks)
    assert not overlapped and most == 1  # both fed and closed the same monitors at once


async def test_the_baseline_is_the_one_read_with_the_policy(tmp_path: Path) -> None:
    # Read when a version first came, a file changed since broke every batch of every model.
    baseline = tmp_path / "baseline.json"
    baseline_command(DATA, ["age", COUNTRY], categorical=[COUNTRY], out=baseline)
    text = POLICY.replace("{warmup: 1000}", f"{{warmup: 1000, baseline: {baseline}}}")
    watchdog, board, _ = setup(text)
    baseline.write_text("{not json")
    await feed(watchdog, ROWS[:200], adult(board.policies.current))
    status = watchdog.status()["models"]["default|adult|"]
    assert status["signals"]["age"]["n"] == 200 and status["errors"] == 0


async def test_a_model_whose_drift_step_fails_leaves_the_others_monitored(
    monkeypatch: Any,
) -> None:
    text = POLICY.replace("models: [{name: adult}]", "models: [{name: adult}, {name: twin}]")
    watchdog, board, _ = setup(text)
    table = board.policies.current
    twin = table.default.model("twin")
    assert twin is not None
    observe = ModelDrift.observe

    def failing(drift: ModelDrift, observations: Sequence[Observation]) -> list[WindowResult]:
        if drift.key[1] == "twin":
            raise RuntimeError("a broken reference")
        return observe(drift, observations)

    monkeypatch.setattr(ModelDrift, "observe", failing)
    for _ in range(2):  # twin's observations come first in each batch
        await feed(watchdog, [*ROWS[:10]] * 2, twin, per_request=10, per_batch=2)
        pending = watchdog.consume([observed(twin, ROWS[:5]), observed(adult(table), ROWS[:5])])
        assert pending is not None
        await pending
    models = watchdog.status()["models"]
    assert models["default|twin|"]["errors"] == 4
    assert models["default|adult|"]["warming"]["age"] == 10  # both batches' rows
    assert models["default|adult|"]["errors"] == 0


def fairness_watchdog() -> tuple[Watchdog, BreakerBoard, CompiledModel]:
    """A watchdog with only the FAIRNESS policy's windows."""
    board = BreakerBoard(Snapshot(table_of(FAIRNESS)))
    return Watchdog(board, threaded=False), board, adult(board.policies.current)


def test_fairness_windows_of_single_rows_trip_disparate_impact() -> None:
    watchdog, board, model = fairness_watchdog()
    batch = []
    for i in range(100):  # two windows, each of 50 women (10% accepted) and 50 men (40%)
        batch.append(observation(model, f"f{i}", decisions("f", 1, int(i % 10 < 1))))
        batch.append(observation(model, f"m{i}", decisions("m", 1, int(i % 10 < 4))))
    assert watchdog.consume(batch) is None  # no drift: nothing left to await
    breaker = board.breaker("default", "adult")
    assert breaker is not None and breaker.state_name == "open"
    assert "fairness.disparate_impact<0.8x2 (0.25)" in breaker.reason
    status = watchdog.status()["models"]["default|adult|"]
    assert status["last"]["fairness.disparate_impact"] == 0.25


def test_one_batch_is_at_most_window_over_min_calls_rows_of_a_fairness_window() -> None:
    # 4,000 rows in one request, every woman refused and every man accepted: were each row
    # counted, they would fill forty windows and open the breaker for every client.
    watchdog, board, model = fairness_watchdog()
    rows = decisions("f", 2000, 0) + decisions("m", 2000, 2000)
    watchdog.consume([observation(model, "batch", rows)])
    windows = watchdog.fairness_windows[("default", "adult", "")]
    assert windows.decisions == 5
    assert {g: c.decisions for g, c in windows.decided.items()} == {"f": 3, "m": 2}
    breaker = board.breaker("default", "adult")
    assert breaker is not None and breaker.state_name == "closed"


class Counts:
    """A fairness source with settable cumulative counts, as the engine keeps them."""

    def __init__(self) -> None:
        self.groups = {"f": GroupCounts(), "m": GroupCounts()}

    def model_keys(self) -> list[ModelKey]:
        return [KEY]

    def counts(self, key: ModelKey) -> dict[str, GroupCounts]:
        return dict(self.groups)


async def test_label_windows_from_the_engine_trip_equal_opportunity() -> None:
    text = FAIRNESS.replace(
        "fairness.disparate_impact, below: 0.8", "fairness.equal_opportunity_difference, above: 0.2"
    )
    source = Counts()
    board = BreakerBoard(Snapshot(table_of(text)))
    watchdog = Watchdog(board, fairness=source, threaded=False)
    board.tickers.append(watchdog.tick)
    board.tick()  # first look: the counts so far are the starting mark
    for _ in range(2):
        source.groups["f"] = source.groups["f"].merge(GroupCounts(50, 10, 10, 0, 0, 40))
        source.groups["m"] = source.groups["m"].merge(GroupCounts(50, 40, 40, 0, 0, 10))
        board.tick()
    breaker = board.breaker("default", "adult")
    assert breaker is not None and breaker.state_name == "open"
    assert "fairness.equal_opportunity_difference>0.2x2 (0.6)" in breaker.reason


async def test_a_baseline_file_replaces_the_warm_up_of_the_signals_it_holds(
    tmp_path: Path,
) -> None:
    baseline = tmp_path / "baseline.json"
    baseline_command(DATA, ["age", COUNTRY], categorical=[COUNTRY], out=baseline)
    text = POLICY.replace("{warmup: 1000}", f"{{warmup: 1000, baseline: {baseline}}}")
    watchdog, board, _ = setup(text)
    await feed(watchdog, shifted(ROWS[:200], 15), adult(board.policies.current))
    status = watchdog.status()["models"]["default|adult|"]
    assert status["warming"] == {"score": 200}  # no baseline for the score: it warms up
    assert status["signals"]["age"]["n"] == 200 and status["signals"]["age"]["alarms"]["psi"]
    assert set(status["signals"]) == {"age", COUNTRY}
