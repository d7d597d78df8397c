"""Records are written in the background: a stuck state backend holds no other monitor."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Sequence

from guardproxy.guards.exchange import Verdict
from guardproxy.monitors.recorder import DecisionRecorder
from guardproxy.monitors.worker import MonitorWorker
from guardproxy.state import MemoryState, PredictionRecord
from guardproxy.state.redis import RedisState
from guardproxy.testing import eventually
from tests.monitors.test_engine import engine_for, exchange, policy
from tests.monitors.test_worker import Collect
from tests.state.conftest import drop_prefix
from tests.state.cut import CutRelay


class GatedState(MemoryState):
    """A memory backend whose record writes wait until the gate opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def record_predictions(self, records: Sequence[PredictionRecord]) -> int:
        await self.gate.wait()
        return await super().record_predictions(records)


async def unguarded(action: Awaitable[bool]) -> bool | None:
    return await action


def rows(prefix: str, n: int) -> list[PredictionRecord]:
    return [
        PredictionRecord(f"{prefix}{i}", 0.0, "eu", "m", "", "a", 0.5, 1, 0.5, "p", "static")
        for i in range(n)
    ]


async def test_a_redis_that_stops_answering_holds_no_other_monitor() -> None:
    entry, prefix = policy(), f"gp-test-{os.urandom(4).hex()}:"
    async with CutRelay("127.0.0.1", 6379).running() as relay:
        # Its calls wait 30 s before they time out: the other monitors must not wait with them.
        state = RedisState(f"redis://127.0.0.1:{relay.port}/0", prefix=prefix, timeout=30)
        engine, probe, worker = engine_for(entry, state), Collect(), MonitorWorker()
        worker.consumers += [engine, probe]
        worker.start()
        relay.cut.arm("EVALSHA", "unanswered")
        try:
            for i in range(5):
                worker.offer(exchange(entry, f"r{i}", [Verdict("a", 0.9, 0.5, 1)]))
                await eventually(lambda i=i: sum(map(len, probe.batches)) == i + 1, within=5)
            assert engine.status()["records"]["pending"] >= 1  # waiting for Redis, not lost
        finally:
            await worker.stop(drain=False)
            await state.close()  # the call that waits fails, and the writer ends
            await engine.stop()
            await drop_prefix(prefix)


async def test_rows_past_the_bound_are_lost_and_counted_while_the_backend_waits() -> None:
    state = GatedState()
    recorder = DecisionRecorder(state, unguarded, max_pending=10)
    recorder.offer(rows("a", 4), {})  # taken by the writer at once, which then waits
    await asyncio.sleep(0)
    for prefix in "bcd":
        recorder.offer(rows(prefix, 4), {})
    assert recorder.status() == {"pending": 8, "lost": 4}  # d: 8 waiting + 4 is over 10
    state.gate.set()
    await recorder.flush()
    assert recorder.recorded == 12 and len(state) == 12 and recorder.status()["pending"] == 0


async def test_caught_up_waits_for_rows_offered_before_it_written_or_lost() -> None:
    state = GatedState()
    recorder = DecisionRecorder(state, unguarded, max_pending=10)
    recorder.offer(rows("a", 4), {})
    waiting = asyncio.create_task(recorder.caught_up())
    await asyncio.sleep(0.01)
    assert not waiting.done()  # "a" waits for the backend
    recorder.offer(rows("b", 20), {})  # over the bound: lost at once, nothing to wait for
    state.gate.set()
    await asyncio.wait_for(waiting, 1.0)
    assert recorder.recorded == 4 and recorder.lost == 20
    recorder.offer(rows("c", 4), {})
    recorder.drop_pending()  # given up: settled as lost
    await asyncio.wait_for(recorder.caught_up(), 1.0)
