"""FairnessEngine: records, label joins, reports, and live threshold calibration."""

from __future__ import annotations

from typing import Any

import pytest

from guardproxy.guards.exchange import Verdict
from guardproxy.hotpath.observation import Observation
from guardproxy.monitors.engine import FairnessEngine
from guardproxy.monitors.histograms import ScoreHistogram
from guardproxy.monitors.records import row_id
from guardproxy.policy.table import CompiledModel, PolicyTable
from guardproxy.policy.thresholds import Snapshot, ThresholdTable
from guardproxy.state import MemoryState, Outcome
from guardproxy.state.redis import RedisState
from tests.factories import compiled_model, observation

SCORES = [i / 100 + 0.005 for i in range(100)]  # one score in each bin
KEY = ("eu", "m", "")


def policy(**adapt: Any) -> CompiledModel:
    spec = {"min_labels_per_group": 50, "max_step": 0.05, "every": 10, **adapt}
    return compiled_model(
        groups={"attribute": {"header": "X-Group", "trusted": True}, "values": ["a", "b"]},
        decision={"threshold": 0.5, "adapt": spec},
        fairness={"bins": 100},
    )


def engine_for(entry: CompiledModel, state: Any = None) -> FairnessEngine:
    table = compiled_table_of(entry)
    return FairnessEngine(
        MemoryState() if state is None else state, Snapshot(table), Snapshot(ThresholdTable())
    )


def compiled_table_of(entry: CompiledModel) -> Any:
    from guardproxy.policy.models import Policy
    from guardproxy.policy.table import compile_policy

    policy = Policy.model_validate({"region": entry.region, "models": [entry.spec.model_dump()]})
    return PolicyTable({entry.region: compile_policy(policy)}, entry.region)


def exchange(entry: CompiledModel, request_id: str, verdicts: list[Verdict]) -> Observation:
    return observation(entry, request_id, tuple(verdicts))


async def replay(engine: FairnessEngine, entry: CompiledModel, cut: dict[str, float]) -> None:
    """Every score once per group, decided at 0.5; label 1 iff score >= the group's cut."""
    batch = [
        exchange(entry, f"{g}{i}", [Verdict(g, s, 0.5, int(s >= 0.5))])
        for g in cut
        for i, s in enumerate(SCORES)
    ]
    engine.consume(batch)
    await engine.flush()
    items = [(f"{g}{i}", int(s >= cut[g]), 0.0) for g in cut for i, s in enumerate(SCORES)]
    await engine.join(items)
    await engine.refresh()


async def test_batch_rows_are_recorded_under_their_own_ids() -> None:
    entry = policy()
    engine = engine_for(entry)
    verdicts = [Verdict("a", 0.9, 0.5, 1), Verdict("b", 0.2, 0.5, 0), Verdict("b", 0.6, 0.5, 1)]
    engine.consume([exchange(entry, "req", verdicts)])
    await engine.flush()
    results = await engine.join([("req", 1, 0.0), ("req:1", 0, 0.0), ("req:2", 1, 0.0)])
    assert [r.outcome for r in results] == [Outcome.JOINED] * 3
    assert [r.record.group for r in results if r.record] == ["a", "b", "b"]
    assert row_id("x", 0) == "x" and row_id("x", 3) == "x:3"


async def test_report_counts_decisions_and_labels_per_group() -> None:
    entry = policy()
    engine = engine_for(entry)
    await replay(engine, entry, {"a": 0.3, "b": 0.7})
    report = engine.report(KEY)
    a, b = report["groups"]["a"], report["groups"]["b"]
    assert a["selection_rate"]["value"] == b["selection_rate"]["value"] == 0.5
    assert a["true_positive_rate"]["value"] == pytest.approx(50 / 70)
    assert b["true_positive_rate"]["value"] == 1.0
    assert a["false_positive_rate"]["value"] == 0.0
    assert b["false_positive_rate"]["value"] == pytest.approx(20 / 70)
    assert a["decisions"] == a["labeled"] == 100
    assert report["equal_opportunity_difference"] == pytest.approx(1 - 50 / 70)
    assert report["demographic_parity_ratio"] == 1.0
    lo, hi = a["true_positive_rate"]["ci95"]
    assert lo < 50 / 70 < hi


async def test_histograms_are_split_by_label() -> None:
    entry = policy()
    state = MemoryState()
    engine = engine_for(entry, state)
    await replay(engine, entry, {"a": 0.3})
    hist = ScoreHistogram.from_dict((await state.counts(KEY))["a"].bins)
    assert int(hist.pos.sum()) == 70 and int(hist.neg.sum()) == 30
    assert hist.pos[30] == 1 and hist.neg[29] == 1


async def test_gauges_expose_rates_and_disparities() -> None:
    entry = policy()
    engine = engine_for(entry)
    await replay(engine, entry, {"a": 0.3, "b": 0.7})
    gauges = engine.gauges()[KEY]
    assert gauges["groups"]["b"]["true_positive_rate"] == 1.0
    assert gauges["groups"]["a"]["threshold"] == 0.5
    assert gauges["disparities"]["demographic_parity_difference"] == 0.0


async def test_calibration_waits_for_min_labels() -> None:
    entry = policy()
    engine = engine_for(entry)
    batch = [exchange(entry, f"a{i}", [Verdict("a", 0.9, 0.5, 1)]) for i in range(10)]
    engine.consume(batch)
    await engine.flush()
    await engine.join([(f"a{i}", 1, 0.0) for i in range(10)])
    result = await engine.calibrate(KEY)
    assert result.status == "waiting" and "a 10/50" in result.reason
    assert engine.thresholds.current.version == "static"


async def test_calibration_moves_at_most_max_step_towards_the_fit() -> None:
    entry = policy()
    engine = engine_for(entry)
    await replay(engine, entry, {"a": 0.3, "b": 0.7})
    first = await engine.calibrate(KEY)
    table = engine.thresholds.current
    assert first.status == "published" and table.version.startswith("t1-")
    assert table.rule(KEY, "a").low == pytest.approx(0.45)  # type: ignore[union-attr]
    assert table.rule(KEY, "b").low == pytest.approx(0.55)  # type: ignore[union-attr]
    await engine.calibrate(KEY)
    assert engine.thresholds.current.version.startswith("t2-")
    assert engine.thresholds.current.rule(KEY, "a").low == pytest.approx(0.40)  # type: ignore[union-attr]
    history = engine.status()["thresholds"]["history"]
    assert [h["version"] for h in history] == [table.version, engine.thresholds.current.version]


async def test_pinned_groups_keep_the_policy_threshold() -> None:
    entry = policy(pinned=("b",))
    engine = engine_for(entry)
    await replay(engine, entry, {"a": 0.3, "b": 0.7})
    await engine.calibrate(KEY)
    assert engine.thresholds.current.rule(KEY, "b") is None
    assert engine.report(KEY)["thresholds"] == {"a": pytest.approx(0.45), "b": 0.5}


async def test_learned_thresholds_survive_a_restart() -> None:
    entry, state = policy(), MemoryState()
    engine = engine_for(entry, state)
    await replay(engine, entry, {"a": 0.3, "b": 0.7})
    await engine.calibrate(KEY)
    restarted = engine_for(entry, state)
    await restarted.start()
    await restarted.stop()
    assert restarted.thresholds.current == engine.thresholds.current
    assert restarted.status()["thresholds"]["history"][0]["reason"] == "restored"


async def test_the_fit_is_deterministic() -> None:
    entry = policy(constraint="equalized_odds")
    engines = [engine_for(entry) for _ in range(2)]
    for engine in engines:
        await replay(engine, entry, {"a": 0.3, "b": 0.7})
        await engine.calibrate(KEY)
    assert engines[0].thresholds.current == engines[1].thresholds.current


async def test_run_due_calibrates_every_adapt_interval() -> None:
    entry = policy()
    now = [1000.0]
    engine = engine_for(entry)
    engine.clock = lambda: now[0]
    await replay(engine, entry, {"a": 0.3, "b": 0.7})
    await engine.run_due()
    assert KEY not in engine.calibrations
    now[0] += 10
    await engine.run_due()
    assert engine.calibrations[KEY].status == "published"


async def test_an_unreachable_state_is_counted_not_raised() -> None:
    entry = policy()
    engine = engine_for(entry, RedisState("redis://127.0.0.1:1/0", timeout=0.2))
    engine.consume([exchange(entry, "r", [Verdict("a", 0.9, 0.5, 1)])])
    await engine.flush()
    result = await engine.calibrate(KEY)
    assert result.status == "failed"
    assert engine.status()["state"]["state_errors"] == 2
    await engine.state.close()


def adapted(adapt: dict[str, Any], fairness: int = 100, **model: Any) -> CompiledModel:
    """A model of groups a and b whose thresholds adapt with no step limit, as `adapt` says."""
    from guardproxy.policy.models import Policy
    from guardproxy.policy.table import compile_policy

    threshold = 50.0 if "score" in model else 0.5
    policy = Policy.model_validate(
        {
            "region": "eu",
            "models": [{"name": "m", **model}],
            "groups": {"attribute": {"header": "X-Group", "trusted": True}, "values": ["a", "b"]},
            "decision": {
                "threshold": threshold,
                "adapt": {"min_labels_per_group": 50, "max_step": 100.0, **adapt},
            },
            "fairness": {"bins": fairness},
        }
    )
    return compile_policy(policy).models[0]


async def noisy_replay(engine: FairnessEngine, entry: CompiledModel, scale: float = 1.0) -> None:
    """Ten rows at each score; P(label 1) is the score for group a, its square for group b."""
    observations, labels = [], []
    for group, power in (("a", 1), ("b", 2)):
        for i, s in enumerate(SCORES):
            positives = round(10 * s**power)
            for j in range(10):
                rid = f"{group}{i}-{j}"
                verdict = Verdict(group, s * scale, 0.5 * scale, int(s >= 0.5))
                observations.append(exchange(entry, rid, [verdict]))
                labels.append((rid, int(j < positives), 0.0))
    engine.consume(observations)
    await engine.flush()
    await engine.join(labels)
    await engine.refresh()


async def fitted(entry: CompiledModel, scale: float = 1.0) -> dict[str, str]:
    """The thresholds one calibration learns from the noisy replay, as X-Guard-Threshold shows."""
    engine = engine_for(entry)
    await noisy_replay(engine, entry, scale)
    assert (await engine.calibrate(KEY)).status == "published"
    table = engine.thresholds.current
    return {g: table.rule(KEY, g).label for g in "ab"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("adapt", "expected"),
    [
        ({"constraint": "per_group"}, {"a": "0.45", "b": "0.67"}),  # each group's best accuracy
        ({"constraint": "none"}, {"a": "0.59", "b": "0.59"}),  # one threshold for everyone
        ({"constraint": "none", "objective": "balanced_accuracy"}, {"a": "0.55", "b": "0.55"}),
        ({"constraint": "per_group", "objective": "cost", "cost": [0, 1, 5, 0]},
         {"a": "0.15", "b": "0.39"}),  # a missed positive costs five false alarms: lower
        ({"constraint": "per_group", "objective": "cost", "cost": [0, 5, 1, 0]},
         {"a": "0.85", "b": "0.92"}),  # a false alarm costs five missed positives: higher
        ({"constraint": "equal_opportunity"}, {"a": "0.55", "b": "0.67|0.74@0.04571"}),
        ({"constraint": "equal_opportunity", "tolerance": 0.2}, {"a": "0.55", "b": "0.74"}),
    ],
)  # fmt: skip
async def test_constraint_objective_cost_and_tolerance_choose_the_fit(
    adapt: dict[str, Any], expected: dict[str, str]
) -> None:
    assert await fitted(adapted(adapt)) == expected


async def test_max_step_from_the_policy_bounds_each_move() -> None:
    entry = policy(max_step=0.1)
    engine = engine_for(entry)
    await replay(engine, entry, {"a": 0.3, "b": 0.7})
    await engine.calibrate(KEY)
    table = engine.thresholds.current
    assert table.rule(KEY, "a").low == pytest.approx(0.4)  # type: ignore[union-attr]
    assert table.rule(KEY, "b").low == pytest.approx(0.6)  # type: ignore[union-attr]


async def test_histogram_bins_and_the_score_range_come_from_the_policy() -> None:
    fine = await fitted(
        adapted({"constraint": "per_group", "objective": "cost", "cost": [0, 1, 5, 0]})
    )
    coarse = adapted({"constraint": "per_group", "objective": "cost", "cost": [0, 1, 5, 0]}, 20)
    assert fine == {"a": "0.15", "b": "0.39"}
    assert await fitted(coarse) == {"a": "0.15", "b": "0.4"}  # thresholds on 0.05 steps
    percent = adapted({"constraint": "per_group"}, score={"range": [0, 100]})
    assert await fitted(percent, scale=100) == {"a": "45", "b": "67"}
