"""MonitorWorker: drains the hot path's bounded queue in batches and hands them to consumers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from guardproxy.hotpath.observation import Observation, row_count, size_of
from guardproxy.tasks import Progress

log = logging.getLogger("guardproxy.monitors")

DEFAULT_BUDGET = 16 * 1024 * 1024  # bytes of observations waiting at most
BATCH_SIZE = 128  # observations per batch at most
# Rows per batch at most: the consumers take ~5 µs a row in one step, so neither many
# requests nor one with many rows (taken in pieces of this many) make one long pause.
BATCH_ROWS = 256
# Seconds a batch gathers. No request is served while a consumer takes a batch (~5 µs an
# observation): gathering for 50 ms at 1,500 requests/s made batches that held one request
# up by ~1 ms, every 50 ms; 10 ms keep them near 0.2 ms. Under a load the loop cannot keep
# up with, the queue fills faster and batches grow to BATCH_SIZE, which keeps the worker
# abreast of the requests (batches of 16 at most fell behind and dropped observations).
INTERVAL = 0.01
# Rows of a batch past which waiting requests run between its consumers. A smaller batch
# takes the consumers less time than handing the loop over and back would cost.
YIELD_ROWS = 16


class Consumer(Protocol):
    """Gets every batch; may return an awaitable for its I/O, which the worker awaits."""

    def consume(self, batch: list[Observation]) -> Awaitable[None] | None:
        """Process one batch of finished exchanges."""


class MonitorWorker:
    """The only way observations leave the hot path: offer() never blocks, drops are counted.

    The queue is bounded in bytes (each observation's estimated size), not only in count.
    """

    def __init__(
        self,
        budget: int = DEFAULT_BUDGET,
        batch_size: int = BATCH_SIZE,
        interval: float = INTERVAL,
    ) -> None:
        self.budget, self.batch_size, self.interval = budget, batch_size, interval
        self.queue: deque[Observation] = deque()
        self.queued_bytes = 0
        self.consumers: list[Consumer] = []
        # What consumers still write in the background, awaited by flush().
        self.flushers: list[Callable[[], Awaitable[None]]] = []
        self.offered = self.dropped = self.processed = self.batches = 0
        # Rows offered, and rows through every consumer or dropped: caught_up() compares them.
        self.offered_rows = 0
        self.finished_rows = Progress()
        self.consumer_errors: dict[str, int] = {}
        self.max_consume = 0.0
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy = False  # a batch is in progress: stop() lets it complete
        self._stopping = False

    def offer(self, observation: Observation) -> None:
        """The proxy's observer: enqueue without waiting, or count a drop."""
        self.offered += 1
        rows = len(observation.verdicts)
        self.offered_rows += rows
        size = size_of(observation)
        if self.queued_bytes + size > self.budget:
            self.dropped += 1
            self.finished_rows.add(rows)
            return
        self.queue.append(observation)
        self.queued_bytes += size
        if len(self.queue) == 1:
            self._ready.set()

    def start(self) -> None:
        """Start draining in the running loop."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="guardproxy-monitor-worker")

    async def stop(self, drain: bool = True) -> None:
        """Stop the task; with drain, hand what is still queued to the consumers first."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            if not self._busy:  # waiting for observations: nothing is cut short
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # a batch in progress always completes
        while drain and self.queue:
            await self.process(self._take())

    async def flush(self) -> None:
        """Return once everything offered so far has been processed and written (tests)."""
        while self.queue or self._busy:
            if self._task is None:
                await self.process(self._take())
            else:
                await asyncio.sleep(self.interval / 5)
        for flush in self.flushers:
            await flush()

    async def _run(self) -> None:
        while not self._stopping:
            await self._ready.wait()
            if len(self.queue) < self.batch_size:
                await asyncio.sleep(self.interval)  # let a batch gather
            batch = self._take()
            if not self.queue:
                self._ready.clear()
            self._busy = True
            try:
                await self.process(batch)
            finally:
                self._busy = False

    def _take(self) -> list[Observation]:
        batch: list[Observation] = []
        queue = self.queue
        rows = 0
        while queue and len(batch) < self.batch_size:
            head = queue[0]
            rows += len(head.verdicts)
            if rows > BATCH_ROWS:
                if not batch:  # a larger request is taken in pieces, one step each
                    piece, queue[0] = head.split(BATCH_ROWS)
                    self.queued_bytes -= size_of(head) - size_of(queue[0])
                    batch.append(piece)
                break
            queue.popleft()
            self.queued_bytes -= size_of(head)
            batch.append(head)
        return batch

    async def process(self, batch: list[Observation]) -> None:
        """Give one batch to every consumer; a failing consumer is counted, never fatal."""
        if not batch:
            return
        rows = row_count(batch)
        large = rows > YIELD_ROWS
        for consumer in self.consumers:
            try:
                began = time.perf_counter()
                result = consumer.consume(batch)
                self.max_consume = max(self.max_consume, time.perf_counter() - began)
                if result is not None:
                    await result
                if large:
                    await asyncio.sleep(0)  # let waiting requests run between consumers
            except Exception:
                name = type(consumer).__name__
                self.consumer_errors[name] = self.consumer_errors.get(name, 0) + 1
                log.exception("monitor consumer %s failed on a batch of %d", name, len(batch))
        for ob in batch:  # a loop, not sum() over a generator: that costs more
            self.processed += not ob.first_row  # a later piece counted with the first
        self.finished_rows.add(rows)
        self.batches += 1

    def caught_up(self) -> Awaitable[None]:
        """Done once every row offered before the call went through the consumers (or was
        dropped); later offers are not waited for, so a steady load never holds it."""
        return self.finished_rows.reach(self.offered_rows)

    def status(self) -> dict[str, Any]:
        """Counters for /status."""
        return {
            "queued": len(self.queue),
            "queued_bytes": self.queued_bytes,
            "budget_bytes": self.budget,
            "offered": self.offered,
            "dropped": self.dropped,
            "processed": self.processed,
            "batches": self.batches,
            "consumers": [type(c).__name__ for c in self.consumers],
            "consumer_errors": dict(self.consumer_errors),
            "max_consume_ms": round(self.max_consume * 1000, 3),
        }
