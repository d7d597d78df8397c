"""Replicas sharing one Redis serve one learned threshold table, whoever calibrated it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from types import MappingProxyType

import pytest

from guardproxy.monitors.engine import FairnessEngine
from guardproxy.policy.thresholds import Snapshot, ThresholdRule, ThresholdTable
from guardproxy.state import MemoryState
from guardproxy.state.redis import RedisState
from guardproxy.testing import eventually
from tests.monitors.test_engine import KEY, compiled_table_of, policy, replay
from tests.state.conftest import REDIS_URL, drop_prefix

Replica = Callable[[], FairnessEngine]


@pytest.fixture
async def replica() -> AsyncIterator[Replica]:
    """Makes engines that share one Redis prefix (each with its own connection), all stopped
    and the prefix removed afterwards."""
    prefix = f"gp-test-{os.urandom(4).hex()}:"
    table = compiled_table_of(policy())
    engines: list[FairnessEngine] = []

    def make() -> FairnessEngine:
        state = RedisState(REDIS_URL, prefix=prefix)
        thresholds = Snapshot(ThresholdTable())
        engines.append(FairnessEngine(state, Snapshot(table), thresholds, tick=0.01))
        return engines[-1]

    yield make
    for engine in engines:
        await engine.stop()
        await engine.state.close()
    await drop_prefix(prefix)


def same_table(*engines: FairnessEngine) -> Callable[[], bool]:
    return lambda: all(e.thresholds.current == engines[0].thresholds.current for e in engines)


async def test_a_replica_serves_the_table_another_replica_calibrated(replica: Replica) -> None:
    a, b = replica(), replica()
    await a.start()
    await b.start()
    await replay(a, policy(), {"a": 0.3, "b": 0.7})
    assert (await a.calibrate(KEY)).status == "published"
    await eventually(same_table(a, b))
    assert b.thresholds.current.rule(KEY, "a") == ThresholdRule(0.45)
    status = b.status()["thresholds"]
    assert status["in_sync"] and status["adopted"] == 1
    assert status["history"][-1]["reason"] == "adopted"


async def test_a_replica_that_calibrated_from_an_older_table_adopts_the_stored_one(
    replica: Replica,
) -> None:
    a, b = replica(), replica()
    await b.start()  # reads no table, then its loop is stopped: it will not see a's
    await b.stop()
    await replay(a, policy(), {"a": 0.3, "b": 0.7})
    assert (await a.calibrate(KEY)).status == "published"
    stale = ThresholdTable("t1-stale", MappingProxyType({(*KEY, "a"): ThresholdRule(0.2)}))
    assert await b.table.save(stale, "eu|m|", "test") == "refused"
    assert b.thresholds.current == a.thresholds.current == await a.state.load_thresholds()
    assert b.status()["thresholds"]["refused"] == 1


async def test_two_replicas_calibrating_at_once_store_one_table(replica: Replica) -> None:
    a, b = replica(), replica()
    await replay(a, policy(), {"a": 0.3, "b": 0.7})
    results = [await a.calibrate(KEY), await b.calibrate(KEY)]
    assert [r.status for r in results] == ["published", "published"]  # b stepped on from a's
    await a.table.sync()
    assert same_table(a, b)() and a.thresholds.current == await a.state.load_thresholds()


async def test_a_table_the_backend_lost_is_stored_again_and_a_new_replica_adopts_it(
    replica: Replica,
) -> None:
    a, b = replica(), replica()
    await a.start()
    await b.start()
    await replay(a, policy(), {"a": 0.3, "b": 0.7})
    await a.calibrate(KEY)
    await eventually(same_table(a, b))
    await a.state._redis.delete(a.state._key("thresholds"))  # as Redis restarted empty
    c = replica()
    await c.start()
    await eventually(same_table(a, b, c))
    assert c.thresholds.current.rule(KEY, "a") == ThresholdRule(0.45)
    assert a.table.stored_again + b.table.stored_again == 1
    assert c.status()["thresholds"]["in_sync"]


async def test_a_calibration_another_replica_made_is_not_made_again(replica: Replica) -> None:
    a, b = replica(), replica()
    now = [1000.0]
    a.clock = b.clock = lambda: now[0]
    await replay(a, policy(), {"a": 0.3, "b": 0.7})
    for engine in (a, b):
        await engine.run_due()  # both due in 10 s
    now[0] += 10
    await a.run_due()
    await b.run_due()
    assert a.calibrations[KEY].status == "published" and KEY not in b.calibrations
    assert same_table(a, b)()


async def test_a_backend_that_does_not_answer_is_counted_and_not_in_sync() -> None:
    engine = FairnessEngine(
        RedisState("redis://127.0.0.1:1/0", timeout=0.2),
        Snapshot(compiled_table_of(policy())),
        Snapshot(ThresholdTable()),
    )
    await engine.start()
    await engine.stop()
    status = engine.status()["thresholds"]
    assert status["errors"] == 1 and not status["in_sync"]
    assert "redis://127.0.0.1:1/0" in status["last_error"]
    await engine.state.close()


async def test_one_process_with_the_memory_backend_stays_in_sync() -> None:
    entry, state = policy(), MemoryState()
    engine = FairnessEngine(state, Snapshot(compiled_table_of(entry)), Snapshot(ThresholdTable()))
    await replay(engine, entry, {"a": 0.3, "b": 0.7})
    assert (await engine.calibrate(KEY)).status == "published"
    await engine.run_due()
    status = engine.status()["thresholds"]
    assert status["in_sync"] and status["stored_version"] == status["version"] != "static"
    assert status["adopted"] == status["refused"] == status["errors"] == 0
