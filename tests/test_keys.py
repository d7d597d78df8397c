"""The decision key: the operator's, or one shared by every replica through the state."""

from __future__ import annotations

import os

from guardproxy.guards.draws import THRESHOLD, Draws, derive_key
from guardproxy.keys import DecisionKey
from guardproxy.state import MemoryState
from guardproxy.state.redis import RedisState
from guardproxy.testing import eventually
from tests.state.conftest import REDIS_URL, drop_prefix


async def test_the_operators_key_wins() -> None:
    draws = Draws()
    await DecisionKey(draws, MemoryState(), "an operator key of length").start()
    assert draws.source == "environment"
    expected = Draws(derive_key("an operator key of length")).uniform(b"row", THRESHOLD)
    assert draws.uniform(b"row", THRESHOLD) == expected


async def test_replicas_share_one_generated_key_through_redis() -> None:
    prefix = f"gp-test-{os.urandom(4).hex()}:"
    states = [RedisState(REDIS_URL, prefix=prefix) for _ in range(2)]
    draws = [Draws(), Draws()]
    try:
        for d, state in zip(draws, states, strict=True):
            await DecisionKey(d, state, None).start()
        assert draws[0].uniform(b"row", THRESHOLD) == draws[1].uniform(b"row", THRESHOLD)
        assert "redis" in draws[0].source
    finally:
        for state in states:
            await state.close()
        await drop_prefix(prefix)


async def test_an_unreachable_state_is_retried_until_the_key_is_shared() -> None:
    down = RedisState("redis://127.0.0.1:9/0", timeout=0.1)
    draws = Draws()
    key = DecisionKey(draws, down, None, retry=0.05)
    await key.start()
    assert key.status()["errors"] == 1 and "not shared" in draws.source
    assert "redis://127.0.0.1:9/0" in (key.status()["last_error"] or "")
    memory = MemoryState()
    key.state = memory  # the backend comes back
    await eventually(lambda: "shared" in draws.source and "not" not in draws.source)
    await key.stop()
    await down.close()


async def test_a_key_redis_lost_is_stored_again_and_every_replica_draws_with_one() -> None:
    prefix = f"gp-test-{os.urandom(4).hex()}:"
    states = [RedisState(REDIS_URL, prefix=prefix) for _ in range(3)]
    draws = [Draws(), Draws(), Draws()]
    keys = [DecisionKey(d, s, None, retry=0.2) for d, s in zip(draws, states, strict=True)]
    try:
        for key in keys[:2]:
            await key.start()
        await states[0]._redis.delete(states[0]._key("secret", "decision_key"))  # Redis emptied
        await keys[2].start()  # stores a key of its own, unlike the two before

        def one_key() -> bool:
            return len({d.uniform(b"row", THRESHOLD) for d in draws}) == 1

        await eventually(one_key)
        assert sum(key.status()["changes"] for key in keys) >= 1
    finally:
        for key, state in zip(keys, states, strict=True):
            await key.stop()
            await state.close()
        await drop_prefix(prefix)
