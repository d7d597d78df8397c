"""MonitorWorker: bounded, never blocking, batches, isolates failures, drains on stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from guardproxy.guards.exchange import Exchange
from guardproxy.monitors.worker import Item, MonitorWorker, held_time
from guardproxy.policy.models import Policy
from guardproxy.policy.table import CompiledPolicy, compile_policy

POLICY = compile_policy(Policy(region="eu"))


def exchange(n: int) -> Exchange:
    headers = CIMultiDictProxy(CIMultiDict[str]())
    return Exchange(f"r{n}", "eu", "POST", "/infer", headers, b"", 0.0)


class Collect:
    """Keeps every batch it gets."""

    def __init__(self) -> None:
        self.batches: list[list[Item]] = []

    def consume(self, batch: list[Item]) -> None:
        self.batches.append(batch)


class Broken:
    """Fails on every batch."""

    def consume(self, batch: list[Item]) -> None:
        raise RuntimeError("boom")


class Slow:
    """Holds the loop for `busy` seconds, then awaits I/O for `io` seconds."""

    def __init__(self, busy: float, io: float) -> None:
        self.busy, self.io = busy, io

    def consume(self, batch: list[Item]) -> Coroutine[Any, Any, None] | None:
        if self.io:
            return self._write()
        self._spin()
        return None

    def _spin(self) -> None:
        end = time.perf_counter() + self.busy
        while time.perf_counter() < end:
            pass

    async def _write(self) -> None:
        await asyncio.sleep(self.io)
        self._spin()


def offer_all(worker: MonitorWorker, n: int, policy: CompiledPolicy = POLICY) -> None:
    for i in range(n):
        worker.offer(exchange(i), policy)


async def test_offer_never_blocks_and_counts_drops() -> None:
    worker = MonitorWorker(queue_size=3)
    offer_all(worker, 5)
    assert (worker.offered, worker.dropped, worker.queue.qsize()) == (5, 2, 3)


async def test_batches_are_bounded_and_in_order() -> None:
    worker = MonitorWorker(batch_size=4, interval=0.01)
    sink = Collect()
    worker.consumers.append(sink)
    worker.start()
    offer_all(worker, 10)
    for _ in range(100):
        if worker.processed == 10:
            break
        await asyncio.sleep(0.01)
    await worker.stop()
    ids = [ex.request_id for batch in sink.batches for ex, _ in batch]
    assert ids == [f"r{i}" for i in range(10)]
    assert max(len(b) for b in sink.batches) <= 4


async def test_a_failing_consumer_is_counted_and_others_still_run() -> None:
    worker = MonitorWorker(interval=0.0)
    sink = Collect()
    worker.consumers.extend([Broken(), sink])
    worker.start()
    offer_all(worker, 3)
    await asyncio.sleep(0.05)
    offer_all(worker, 2)
    await asyncio.sleep(0.05)
    await worker.stop()
    assert worker.status()["consumer_errors"]["Broken"] >= 2
    assert sum(len(b) for b in sink.batches) == 5


async def test_stop_drains_what_is_queued() -> None:
    worker = MonitorWorker(interval=10.0)
    sink = Collect()
    worker.consumers.append(sink)
    worker.start()
    offer_all(worker, 7)
    await asyncio.sleep(0.01)
    await worker.stop(drain=True)
    assert sum(len(b) for b in sink.batches) == 7 and worker.queue.empty()


async def test_stop_without_drain_leaves_the_queue() -> None:
    worker = MonitorWorker()
    worker.consumers.append(Collect())
    offer_all(worker, 2)
    await worker.stop(drain=False)
    assert worker.processed == 0


async def test_max_pause_counts_the_loop_holding_part_only() -> None:
    assert await held_time(Slow(0.02, 0).consume, []) >= 0.02
    pause = await held_time(Slow(0.005, 0.1).consume, [])
    assert 0.005 <= pause < 0.05


async def test_status_reports_the_worst_pause() -> None:
    worker = MonitorWorker()
    worker.consumers.append(Slow(0.015, 0))
    offer_all(worker, 1)
    await worker.flush()
    assert worker.status()["max_pause_ms"] >= 15.0
