"""The same contract for the memory and the Redis backend."""

from __future__ import annotations

import asyncio
from types import MappingProxyType

from guardproxy.policy.thresholds import ThresholdRule, ThresholdTable
from guardproxy.state import Outcome, PredictionRecord, StateBackend
from tests.state.conftest import tally


def record(
    request_id: str, group: str = "a", score: float = 0.7, decision: int = 1
) -> PredictionRecord:
    return PredictionRecord(
        request_id, 1.5, "eu", "credit", "3", group, score, decision, 0.5, "p1", "static"
    )


EU = ("eu", "credit", "3")


async def test_join_returns_the_record(state: StateBackend) -> None:
    await state.record_predictions([record("r1"), record("r2", "b", 0.25, 0)])
    joined = await state.join_label("r2", 1, 10.0, tally)
    assert joined.outcome is Outcome.JOINED
    assert joined.record == record("r2", "b", 0.25, 0)


async def test_unknown_and_duplicate(state: StateBackend) -> None:
    await state.record_predictions([record("r1")])
    assert (await state.join_label("nope", 1, 0.0, tally)).outcome is Outcome.UNKNOWN
    assert (await state.join_label("r1", 0, 0.0, tally)).outcome is Outcome.JOINED
    again = await state.join_label("r1", 1, 0.0, tally)
    assert again.outcome is Outcome.DUPLICATE and again.record is None


async def test_concurrent_labels_for_one_id_join_once(state: StateBackend) -> None:
    await state.record_predictions([record("r1")])
    results = await asyncio.gather(*(state.join_label("r1", 1, 0.0, tally) for _ in range(20)))
    assert sum(r.outcome is Outcome.JOINED for r in results) == 1
    assert sum(r.outcome is Outcome.DUPLICATE for r in results) == 19


async def test_a_retried_prediction_keeps_its_first_record_and_its_label(
    state: StateBackend,
) -> None:
    first = record("r1", "a", 0.9, 1)
    assert await state.record_predictions([first]) == 0
    retry = first._replace(time=9.0, threshold_version="v2")  # the same prediction, later
    assert await state.record_predictions([retry, record("r2")]) == 1
    joined = await state.join_label("r1", 1, 0.0, tally)
    assert joined.record == first  # the label joins the first prediction
    for _ in range(2):
        assert (await state.join_label("r1", 1, 0.0, tally)).outcome is Outcome.DUPLICATE


async def test_an_id_given_to_another_prediction_joins_no_label(state: StateBackend) -> None:
    # Whoever sent an id first, a label cannot tell which prediction it was meant for.
    await state.record_predictions([record("r1", "a", 0.9, 1), record("r2"), record("r3")])
    others = [record("r1", "b", 0.9, 1), record("r2", score=0.71), record("r3", decision=0)]
    assert await state.record_predictions(others) == 3
    for rid in ("r1", "r2", "r3"):
        for _ in range(2):
            contested = await state.join_label(rid, 1, 0.0, tally)
            assert contested.outcome is Outcome.CONTESTED and contested.record is None
    await state.record_predictions([record("r4")])
    assert (await state.join_label("r4", 1, 0.0, tally)).outcome is Outcome.JOINED
    await state.record_predictions([record("r4", "b")])  # contested after its label
    assert (await state.join_label("r4", 1, 0.0, tally)).outcome is Outcome.CONTESTED


async def test_records_are_written_in_calls_of_many(state: StateBackend) -> None:
    records = [record(f"m{i}", score=i / 1000) for i in range(600)]
    assert await state.record_predictions(records) == 0
    assert await state.record_predictions(records[::7]) == len(records[::7])  # retries
    joined = await state.join_labels([(f"m{i}", 1, 0.0) for i in (0, 255, 256, 599)], tally)
    assert [j.record for j in joined] == [records[i] for i in (0, 255, 256, 599)]


async def test_long_ids_are_stored_under_a_fixed_size_key(state: StateBackend) -> None:
    long_id = "x" * 4000
    await state.record_predictions([record(long_id)])
    joined = await state.join_label(long_id, 1, 0.0, tally)
    assert joined.record is not None and joined.record.request_id == long_id


async def test_join_labels_keeps_order(state: StateBackend) -> None:
    await state.record_predictions([record("x"), record("y")])
    results = await state.join_labels(
        [("y", 1, 0.0), ("z", 1, 0.0), ("y", 0, 0.0), ("x", 0, 0.0)], tally
    )
    assert [r.outcome for r in results] == [
        Outcome.JOINED,
        Outcome.UNKNOWN,
        Outcome.DUPLICATE,
        Outcome.JOINED,
    ]


async def test_counters_and_histograms_add_up(state: StateBackend) -> None:
    await state.add_counts(EU, "a", {"decisions": 3, "selected": 2})
    await state.add_counts(EU, "a", {"decisions": 1, "tp": 1})
    await state.add_counts(EU, "b:x", {"decisions": 5})
    await state.add_counts(("eu", "credit", "4"), "a", {"decisions": 9})
    await state.add_counts(("us", "fraud", ""), "a", {"decisions": 7})
    await state.add_histogram(EU, "a", {"p:70": 2, "p:3": 1})
    await state.add_histogram(EU, "a", {"n:70": 4})
    groups = await state.counts(EU)
    assert sorted(groups) == ["a", "b:x"]
    assert groups["a"].counts.to_dict() == {
        "decisions": 4,
        "selected": 2,
        "tp": 1,
        "fp": 0,
        "tn": 0,
        "fn": 0,
    }
    assert groups["a"].bins == {"p:70": 2, "p:3": 1, "n:70": 4}
    assert groups["b:x"].counts.decisions == 5
    assert await state.keys() == [EU, ("eu", "credit", "4"), ("us", "fraud", "")]


async def test_thresholds_round_trip(state: StateBackend) -> None:
    assert await state.load_thresholds() is None
    rules = {(*EU, "a"): ThresholdRule(0.4), (*EU, "b"): ThresholdRule(0.3, 0.35, 0.25)}
    table = ThresholdTable("t3-abcd", MappingProxyType(rules))
    assert (await state.save_thresholds(table, None)).ok
    loaded = await state.load_thresholds()
    assert loaded is not None
    assert loaded.version == "t3-abcd" and dict(loaded.rules) == rules


def table_of(version: str, low: float) -> ThresholdTable:
    return ThresholdTable(version, MappingProxyType({(*EU, "a"): ThresholdRule(low)}))


async def test_a_save_against_an_older_version_is_refused_and_answers_the_stored_table(
    state: StateBackend,
) -> None:
    assert (await state.save_thresholds(table_of("t1-a", 0.4), None)).ok
    assert (await state.save_thresholds(table_of("t2-b", 0.45), "t1-a")).ok
    stale = await state.save_thresholds(table_of("t2-c", 0.35), "t1-a")  # fitted on t1-a
    assert not stale.ok and stale.stored == table_of("t2-b", 0.45)
    first = await state.save_thresholds(table_of("t1-d", 0.3), None)  # a table is stored
    assert not first.ok and first.stored is not None and first.stored.version == "t2-b"
    assert await state.load_thresholds() == table_of("t2-b", 0.45)


async def test_a_save_expecting_a_table_the_backend_lost_is_refused(
    state: StateBackend,
) -> None:
    lost = await state.save_thresholds(table_of("t2-b", 0.45), "t1-a")
    assert not lost.ok and lost.stored is None
    assert await state.load_thresholds() is None


async def test_ping(state: StateBackend) -> None:
    assert await state.ping() is True


async def test_shared_secret_is_set_once_and_every_caller_gets_the_first(
    state: StateBackend,
) -> None:
    results = await asyncio.gather(*(state.shared_secret("k", f"candidate-{i}") for i in range(10)))
    assert len(set(results)) == 1 and results[0].startswith("candidate-")
    assert await state.shared_secret("k", "late") == results[0]
    assert await state.shared_secret("other", "x-1") == "x-1"


async def test_writers_marks_are_kept_replaced_and_forgotten(state: StateBackend) -> None:
    await state.mark_written("a:1:x", 10.25)
    await state.mark_written("b:2:y", 11.5)
    await state.mark_written("a:1:x", 12.125)
    assert await state.written_marks() == {"a:1:x": 12.125, "b:2:y": 11.5}
    await state.forget_writers(["a:1:x", "never-marked"])
    await state.forget_writers([])
    assert await state.written_marks() == {"b:2:y": 11.5}
