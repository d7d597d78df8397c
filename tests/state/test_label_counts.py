"""A label is counted exactly once, however the state backend's connection fails on the way."""

from __future__ import annotations

import pytest

from guardproxy.guards.exchange import Verdict
from guardproxy.state import Outcome, StateError
from guardproxy.state.redis import RedisState
from tests.monitors.test_engine import KEY, engine_for, exchange, policy
from tests.state.conftest import drop_prefix
from tests.state.cut import CutRelay

RETRIES = 3  # a label pipeline sends a batch again until it gets an answer


@pytest.mark.parametrize(
    ("command", "how"),
    [("EVALSHA", "unanswered"), ("EVALSHA", "lost"), ("HINCRBY", "lost"), ("HGETALL", "lost")],
)
async def test_a_label_is_counted_once_whatever_call_fails(
    redis_prefix: str, command: str, how: str
) -> None:
    entry = policy()
    async with CutRelay("127.0.0.1", 6379).running() as relay:
        url = f"redis://127.0.0.1:{relay.port}/0"
        state = RedisState(url, prefix=redis_prefix, timeout=0.2)
        try:
            engine = engine_for(entry, state)
            engine.consume([exchange(entry, "r1", [Verdict("a", 0.705, 0.5, 1)])])
            await engine.flush()
            relay.cut.arm(command, how)
            outcomes: list[Outcome | None] = []
            for _ in range(RETRIES):
                try:
                    outcomes.append((await engine.join([("r1", 1, 0.0)]))[0].outcome)
                    break
                except StateError:
                    outcomes.append(None)
            relay.cut.disarm()
            groups = await state.counts(KEY)
        finally:
            await state.close()
            await drop_prefix(redis_prefix)
    assert outcomes[-1] in (Outcome.JOINED, Outcome.DUPLICATE)
    assert outcomes.count(Outcome.JOINED) <= 1
    # Claimed means counted: a label answered joined, or duplicate after a failed try, is in
    # the confusion counts and the histogram the calibration reads, once.
    assert groups["a"].counts.tp == 1 and groups["a"].counts.labeled() == 1
    assert groups["a"].bins == {"p:70": 1}
