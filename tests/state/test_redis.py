"""What only the Redis backend does: expiring keys, a key prefix, fast failure."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from guardproxy.policy.thresholds import ThresholdTable
from guardproxy.state import Outcome, PredictionRecord, StateError, open_state
from guardproxy.state.base import record_key
from guardproxy.state.redis import RedisState

from .conftest import REDIS_URL, drop_prefix, tally
from .cut import CutRelay


def record(request_id: str) -> PredictionRecord:
    return PredictionRecord(request_id, 0.0, "eu", "m", "", "a", 0.5, 1, 0.5, "p", "static")


async def test_records_expire_and_use_the_prefix(redis_prefix: str) -> None:
    state = RedisState(REDIS_URL, prefix=redis_prefix, ttl=60)
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        await state.record_predictions([record("r1")])
        ttl = await client.ttl(f"{redis_prefix}pred:{record_key('r1')}")
        assert 0 < ttl <= 60
    finally:
        await client.aclose()
        await state.close()
        await drop_prefix(redis_prefix)


async def test_open_state_reads_the_prefix_from_the_url(redis_prefix: str) -> None:
    state = open_state(f"{REDIS_URL}?prefix={redis_prefix}")
    assert isinstance(state, RedisState) and state.prefix == redis_prefix
    await state.close()
    with pytest.raises(ValueError, match="unknown state backend") as caught:
        open_state("mongodb://admin:hunter2@x/0")
    assert "hunter2" not in str(caught.value) and "***@x" in str(caught.value)


async def test_unreachable_redis_fails_fast_with_state_error() -> None:
    state = RedisState("redis://127.0.0.1:1/0", timeout=0.2)
    began = time.perf_counter()
    with pytest.raises(StateError, match="redis"):
        await state.record_predictions([record("r1")])
    assert time.perf_counter() - began < 1.0
    assert await state.ping() is False
    await state.close()


async def test_an_unreadable_stored_table_is_a_state_error_never_overwritten(
    redis_prefix: str,
) -> None:
    state = RedisState(REDIS_URL, prefix=redis_prefix)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.set(f"{redis_prefix}thresholds", b"not json")
        with pytest.raises(StateError, match="unreadable"):
            await state.save_thresholds(ThresholdTable("t1-a"), None)
        assert await client.get(f"{redis_prefix}thresholds") == b"not json"
    finally:
        await state.close()
        await client.aclose()
        await drop_prefix(redis_prefix)


def records(*ids: str) -> list[PredictionRecord]:
    """Prediction records of these ids."""
    return [record(i) for i in ids]


async def test_records_and_labels_take_one_round_trip_and_survive_a_script_flush(
    redis_prefix: str,
) -> None:
    async with CutRelay("127.0.0.1", 6379).running() as relay:
        state = RedisState(f"redis://127.0.0.1:{relay.port}/0", prefix=redis_prefix)
        try:
            assert await state.record_predictions(records("r1", "r2")) == 0
            flush = aioredis.Redis.from_url(REDIS_URL)
            await flush.script_flush()  # as a restarted Redis: no script loaded
            await flush.aclose()
            assert await state.record_predictions(records("r1", "r3")) == 1  # counted once
            joined = await state.join_labels([("r3", 1, 0.0), ("r4", 1, 0.0)], tally)
            relay.sent.clear()
            assert await state.record_predictions(records("r5")) == 0
            assert [b"EVALSHA" in chunk for chunk in relay.sent] == [True]
        finally:
            await state.close()
            await drop_prefix(redis_prefix)
    assert [j.outcome for j in joined] == [Outcome.JOINED, Outcome.UNKNOWN]
