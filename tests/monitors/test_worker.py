"""MonitorWorker: bounded, never blocking, batches, isolates failures, drains on stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from guardproxy.guards.exchange import Verdict
from guardproxy.hotpath.observation import Observation
from guardproxy.monitors.worker import BATCH_ROWS, BATCH_SIZE, MonitorWorker
from guardproxy.testing import eventually
from tests.factories import compiled_model, observation

MODEL = compiled_model()
Item = Observation


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


def offer_all(worker: MonitorWorker, n: int, rows: int = 1, prefix: str = "r") -> None:
    verdicts = tuple(Verdict("*", 0.5, 0.5, 1) for _ in range(rows))
    for i in range(n):
        worker.offer(observation(MODEL, f"{prefix}{i}", verdicts))


async def test_offer_never_blocks_and_the_queue_is_bounded_in_bytes() -> None:
    one = observation(MODEL, "r", (Verdict("*", 0.5, 0.5, 1),)).size
    worker = MonitorWorker(budget=3 * one)
    offer_all(worker, 5)
    assert (worker.offered, worker.dropped, len(worker.queue)) == (5, 2, 3)
    assert worker.queued_bytes == 3 * one
    big = MonitorWorker(budget=3 * one)
    offer_all(big, 2, rows=50)  # one large batch answer weighs as much as many small ones
    assert big.dropped == 2 and len(big.queue) == 0


async def test_batches_are_bounded_and_in_order() -> None:
    worker = MonitorWorker(batch_size=4, interval=0.01)
    sink = Collect()
    worker.consumers.append(sink)
    worker.start()
    offer_all(worker, 10)
    await eventually(lambda: worker.processed == 10)
    await worker.stop()
    ids = [ob.request_id for batch in sink.batches for ob in batch]
    assert ids == [f"r{i}" for i in range(10)]
    assert max(len(b) for b in sink.batches) <= 4


async def test_at_a_modest_rate_batches_stay_small() -> None:
    worker = MonitorWorker()  # the default gathering interval
    sink = Collect()
    worker.consumers.append(sink)
    worker.start()
    for i in range(100):  # ~500 a second: each batch is a request's pause, so keep it short
        worker.offer(observation(MODEL, f"r{i}", (Verdict("*", 0.5, 0.5, 1),)))
        await asyncio.sleep(0.002)
    await worker.stop()
    assert sum(len(b) for b in sink.batches) == 100
    assert max(len(b) for b in sink.batches) <= 15  # gathering for 50 ms made ~25


async def test_a_backlog_is_taken_in_batches_as_large_as_allowed() -> None:
    worker = MonitorWorker(interval=0.0)
    sink = Collect()
    worker.consumers.append(sink)
    offer_all(worker, BATCH_SIZE * 2 + 1)  # faster than the loop lets it work: it keeps up
    worker.start()
    await eventually(lambda: worker.processed == BATCH_SIZE * 2 + 1)
    await worker.stop()
    assert [len(b) for b in sink.batches] == [BATCH_SIZE, BATCH_SIZE, 1]


async def test_batches_are_bounded_in_rows_and_a_larger_request_goes_in_pieces() -> None:
    worker = MonitorWorker(interval=0.0)
    sink = Collect()
    worker.consumers.append(sink)
    offer_all(worker, 5, rows=100)  # batch requests, a client's choice
    offer_all(worker, 1, rows=BATCH_ROWS * 3 + 10, prefix="big")
    offer_all(worker, 2, rows=1)
    worker.start()
    await eventually(lambda: worker.processed == 8)
    await worker.stop()
    rows = [sum(len(ob.verdicts) for ob in batch) for batch in sink.batches]
    assert rows == [200, 200, 100, BATCH_ROWS, BATCH_ROWS, BATCH_ROWS, 10 + 2]
    pieces = [ob for batch in sink.batches[3:] for ob in batch if ob.request_id == "big0"]
    assert [ob.first_row for ob in pieces] == [0, BATCH_ROWS, 2 * BATCH_ROWS, 3 * BATCH_ROWS]
    assert worker.queued_bytes == 0 and worker.processed == 8  # exchanges, not pieces


def test_a_split_keeps_each_rows_features_and_its_place() -> None:
    verdicts = tuple(Verdict("*", i / 10, 0.5, int(i >= 5)) for i in range(10))
    ages = tuple(range(10))
    whole = observation(MODEL, "big", verdicts, features=(ages, tuple("abcdefghij")))
    head, rest = whole.split(4)
    assert head.verdicts == verdicts[:4] and head.features == (ages[:4], tuple("abcd"))
    assert rest.verdicts == verdicts[4:] and rest.features == (ages[4:], tuple("efghij"))
    assert (head.first_row, rest.first_row, head.continued, rest.continued) == (0, 4, False, True)
    again, last = rest.split(3)
    assert (again.first_row, last.first_row, last.features[0]) == (4, 7, (7, 8, 9))


async def test_a_failing_consumer_is_counted_and_others_still_run() -> None:
    worker = MonitorWorker(interval=0.0)
    sink = Collect()
    worker.consumers.extend([Broken(), sink])
    worker.start()
    offer_all(worker, 3)
    await eventually(lambda: worker.processed == 3)
    offer_all(worker, 2)
    await eventually(lambda: worker.processed == 5)
    await worker.stop()
    assert worker.status()["consumer_errors"]["Broken"] >= 2
    assert sum(len(b) for b in sink.batches) == 5


async def test_stop_drains_what_is_queued() -> None:
    worker = MonitorWorker(interval=10.0)
    sink = Collect()
    worker.consumers.append(sink)
    worker.start()
    offer_all(worker, 7)
    await worker.stop(drain=True)
    assert sum(len(b) for b in sink.batches) == 7 and not worker.queue


async def test_stop_without_drain_leaves_the_queue() -> None:
    worker = MonitorWorker()
    worker.consumers.append(Collect())
    offer_all(worker, 2)
    await worker.stop(drain=False)
    assert worker.processed == 0


async def test_status_reports_the_longest_consume_call() -> None:
    worker = MonitorWorker()
    worker.consumers.append(Slow(0.015, 0))
    offer_all(worker, 1)
    await worker.flush()
    assert worker.status()["max_consume_ms"] >= 15.0


async def test_caught_up_waits_for_what_was_offered_before_it_only() -> None:
    worker = MonitorWorker(batch_size=1)
    worker.consumers.append(Collect())
    verdict = (Verdict("*", 0.5, 0.5, 1),)
    worker.offer(observation(MODEL, "before", verdict))
    waiting = asyncio.create_task(worker.caught_up())
    worker.offer(observation(MODEL, "after", verdict))
    await asyncio.sleep(worker.interval * 2)
    assert not waiting.done()  # "before" is still queued
    await worker.process(worker._take())  # "before" only: "after" stays queued
    await asyncio.wait_for(waiting, 1.0)
    assert len(worker.queue) == 1


async def test_caught_up_counts_a_dropped_observation_as_done() -> None:
    one = observation(MODEL, "r", (Verdict("*", 0.5, 0.5, 1),))
    worker = MonitorWorker(budget=one.size - 1)
    worker.offer(one)
    assert worker.dropped == 1
    await asyncio.wait_for(worker.caught_up(), 1.0)
