"""DecisionRecorder: records and decision counts written to the state backend in the background."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from guardproxy.monitors.records import DecisionDeltas
from guardproxy.state.base import PredictionRecord, StateBackend
from guardproxy.tasks import Progress

log = logging.getLogger("guardproxy.monitors")

# Decided rows waiting for the state backend at most (~200 bytes each); more are lost, and
# counted. At 2,000 rows a second, 25 s of a stuck backend.
MAX_PENDING = 50_000
WRITE_ROWS = 2_048  # rows of several batches written in one go
Guard = Callable[[Awaitable[bool]], Awaitable[bool | None]]  # None: the call failed, counted


class DecisionRecorder:
    """Keeps the monitor worker off the state backend: `offer` never waits, a task writes.

    The worker hands every batch to each monitor in turn: while it awaited these writes, a
    Redis that stopped answering (each call waits out its timeout) held the drift and breaker
    monitors too, and their observations queued for a minute behind 8 s of traffic.
    """

    def __init__(
        self,
        state: StateBackend,
        guarded: Guard,
        max_pending: int = MAX_PENDING,
        write_rows: int = WRITE_ROWS,
    ) -> None:
        self.state, self.guarded = state, guarded
        self.max_pending, self.write_rows = max_pending, write_rows
        self.recorded = self.reused_ids = self.lost = self.pending = 0
        self.offered = 0  # rows offered, and rows written or lost (caught_up compares them)
        self.settled = Progress()
        self._queue: deque[tuple[list[PredictionRecord], DecisionDeltas]] = deque()
        self._writer: asyncio.Task[None] | None = None

    def offer(self, records: list[PredictionRecord], deltas: DecisionDeltas) -> None:
        """Queue a batch's records and counts for the writer; lost (and counted) when full."""
        self.offered += len(records)
        if self.pending + len(records) > self.max_pending:
            self.lost += len(records)
            self.settled.add(len(records))
            return
        self._queue.append((records, deltas))
        self.pending += len(records)
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain(), name="guardproxy-records")

    async def flush(self) -> None:
        """Return once everything offered so far is written, or has failed."""
        while (task := self._writer) is not None:
            await asyncio.shield(task)

    def caught_up(self) -> Awaitable[None]:
        """Done once every row offered before the call is written or lost; rows offered
        later are not waited for."""
        return self.settled.reach(self.offered)

    def drop_pending(self) -> None:
        """Give up what waits (counted as lost): the backend is failing, at shutdown."""
        self.lost += self.pending
        self.settled.add(self.pending)
        self._queue.clear()
        self.pending = 0

    async def _drain(self) -> None:
        try:
            while self._queue:
                records, deltas = self._take()
                written: bool | None = None
                try:
                    written = await self.guarded(self._write(records, deltas))
                except Exception:
                    log.exception("recording %d decided rows failed", len(records))
                if not written:
                    self.lost += len(records)
                self.settled.add(len(records))
        finally:
            self._writer = None

    def _take(self) -> tuple[list[PredictionRecord], DecisionDeltas]:
        """Several batches' records as one write, their decision counts added up."""
        records: list[PredictionRecord] = []
        deltas: DecisionDeltas = {}
        while self._queue and (
            not records or len(records) + len(self._queue[0][0]) <= self.write_rows
        ):
            more, counts = self._queue.popleft()
            self.pending -= len(more)
            records += more
            for owner, (n, selected) in counts.items():
                total = deltas.setdefault(owner, [0, 0])
                total[0] += n
                total[1] += selected
        return records, deltas

    async def _write(self, records: list[PredictionRecord], deltas: DecisionDeltas) -> bool:
        self.reused_ids += await self.state.record_predictions(records)
        for (key, group), (n, selected) in deltas.items():
            await self.state.add_counts(key, group, {"decisions": n, "selected": selected})
        self.recorded += len(records)
        return True

    def status(self) -> dict[str, Any]:
        """Rows waiting to be written, and rows whose records were lost."""
        return {"pending": self.pending, "lost": self.lost}
