"""MonitorWorker: drains the hot path's bounded queue in batches and hands them to consumers."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Protocol

from guardproxy.guards.exchange import Exchange
from guardproxy.policy.table import CompiledPolicy
from guardproxy.tasks import cancel_and_wait

log = logging.getLogger("guardproxy.monitors")

Item = tuple[Exchange, CompiledPolicy]


class Consumer(Protocol):
    """Gets every batch; may return an awaitable for its I/O, which the worker awaits."""

    def consume(self, batch: list[Item]) -> Awaitable[None] | None:
        """Process one batch of finished exchanges."""


class MonitorWorker:
    """The only place exchanges leave the hot path: offer() never blocks, drops are counted."""

    def __init__(
        self, queue_size: int = 10_000, batch_size: int = 128, interval: float = 0.05
    ) -> None:
        self.queue: asyncio.Queue[Item] = asyncio.Queue(queue_size)
        self.consumers: list[Consumer] = []
        self.batch_size = batch_size
        self.interval = interval
        self.offered = self.dropped = self.processed = self.batches = 0
        self.consumer_errors: dict[str, int] = {}
        self.max_pause = 0.0
        self._task: asyncio.Task[None] | None = None
        self._pending: list[Item] = []  # taken from the queue, not yet handed over
        self._current: asyncio.Future[None] | None = None

    def offer(self, ex: Exchange, policy: CompiledPolicy) -> None:
        """The proxy's observer: enqueue without waiting, or count a drop."""
        self.offered += 1
        try:
            self.queue.put_nowait((ex, policy))
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self) -> None:
        """Start draining in the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="guardproxy-monitor-worker")

    async def stop(self, drain: bool = True) -> None:
        """Stop the task; with drain, hand what is still queued to the consumers first."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._current is not None:
            await self._current  # a batch in progress always completes
        pending, self._pending = self._pending, []
        if drain:
            await self.process(pending)
            while not self.queue.empty():
                await self.process(self._take())

    async def flush(self) -> None:
        """Return once everything offered so far has been processed (tests, shutdown)."""
        while self.processed < self.offered - self.dropped:
            if self._task is None:
                if self.queue.empty():
                    return
                await self.process(self._take())
            else:
                await asyncio.sleep(self.interval / 5)

    async def _run(self) -> None:
        while True:
            self._pending.append(await self.queue.get())
            await asyncio.sleep(self.interval if self.queue.qsize() < self.batch_size else 0)
            batch = self._pending + self._take(self.batch_size - len(self._pending))
            self._pending = []
            self._current = asyncio.ensure_future(self.process(batch))
            await asyncio.shield(self._current)
            self._current = None

    def _take(self, limit: int | None = None) -> list[Item]:
        limit = self.batch_size if limit is None else limit
        batch: list[Item] = []
        while len(batch) < limit and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    async def process(self, batch: list[Item]) -> None:
        """Give one batch to every consumer; a failing consumer is counted, never fatal."""
        if not batch:
            return
        for consumer in self.consumers:
            try:
                pause = await held_time(consumer.consume, batch)
                self.max_pause = max(self.max_pause, pause)
                await asyncio.sleep(0)  # let waiting requests run between consumers
            except Exception:
                name = type(consumer).__name__
                self.consumer_errors[name] = self.consumer_errors.get(name, 0) + 1
                log.exception("monitor consumer %s failed on a batch of %d", name, len(batch))
        self.processed += len(batch)
        self.batches += 1

    def status(self) -> dict[str, Any]:
        """Counters for /status."""
        return {
            "queued": self.queue.qsize(),
            "capacity": self.queue.maxsize,
            "offered": self.offered,
            "dropped": self.dropped,
            "processed": self.processed,
            "batches": self.batches,
            "consumers": [type(c).__name__ for c in self.consumers],
            "consumer_errors": dict(self.consumer_errors),
            "max_pause_ms": round(self.max_pause * 1000, 3),
        }


async def held_time(call: Callable[..., Any], *args: Any) -> float:
    """Run call(*args), await what it returns; the longest stretch it kept the loop, in s."""
    began = time.perf_counter()
    result = call(*args)
    longest = time.perf_counter() - began
    if inspect.isawaitable(result):
        longest = max(longest, await _stepped(result.__await__()))
    return longest


async def _stepped(steps: Generator[Any, None, Any]) -> float:
    """Drive an awaitable step by step, timing each step between its suspensions."""
    longest, error = 0.0, None
    while True:
        began = time.perf_counter()
        try:
            waited = steps.throw(error) if error is not None else steps.send(None)
        except StopIteration:
            return max(longest, time.perf_counter() - began)
        longest, error = max(longest, time.perf_counter() - began), None
        try:
            await _wait(waited)
        except BaseException as exc:  # handed back to the awaitable, as a task would
            error = exc


async def _wait(waited: Any) -> None:
    """Wait for what a step yielded: a future (taken over as a task takes it) or a bare yield."""
    if waited is None:
        await asyncio.sleep(0)
        return
    waited._asyncio_future_blocking = False
    await waited
