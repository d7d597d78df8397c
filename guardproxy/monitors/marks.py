"""How far every process sharing the state backend has written its records.

A label may reach another worker, or another replica, than the one that answered: its
record is written there 10-20 ms after the answer. Each process marks, every BEAT, a time
before which every answer it sent has its record written; a label with an unknown id waits
until every other live process's mark has passed the label's arrival.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from guardproxy.state.base import StateBackend, StateError

log = logging.getLogger("guardproxy.monitors")

BEAT = 0.025  # seconds between a process's marks
POLL = 0.01  # seconds between reads of the other marks while a label waits
# A mark this far behind a label's arrival is a process that stopped without saying so (or
# cannot reach the backend): it is not waited for, and after FORGET it is removed.
STALE = 2.0
FORGET = 60.0
PRUNE_EVERY = 200  # beats between removals of forgotten marks


def writer_name() -> str:
    """This process among every worker of every replica, and apart from one that ran before
    it with the same host name and process id (a restarted container): `host:pid:random`."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class WrittenMarks:
    """Publishes this process's mark and waits for the others' (a shared backend only)."""

    def __init__(
        self,
        state: StateBackend,
        written: Callable[[], Awaitable[None]],
        name: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state, self.written, self.clock = state, written, clock
        self.name = name or writer_name()
        self.published = self.errors = self.waits = 0
        self.other_writers = 0  # other live processes seen at the last read
        self.last_error: str | None = None
        self.reads = 0  # of the marks, shared by the labels waiting at once
        self._task: asyncio.Task[None] | None = None
        self._read: asyncio.Future[dict[str, float]] | None = None
        self._read_at = float("-inf")

    def start(self) -> None:
        """Start marking."""
        self._task = asyncio.create_task(self._beat(), name="guardproxy-marks")

    async def stop(self) -> None:
        """Stop marking, and remove this process's mark: no label waits for it any longer."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.state.forget_writers([self.name])
        except StateError as exc:
            self._failed(exc)

    async def others_written(self, since: float) -> None:
        """Return once every other live process has written the records of the answers it
        sent before `since` (a time of `clock`); at once if the marks cannot be read."""
        self.waits += 1
        while True:
            try:
                marks = await self._marks()
            except StateError as exc:
                self._failed(exc)
                return
            marks.pop(self.name, None)
            live = [mark for mark in marks.values() if mark >= since - STALE]
            self.other_writers = len(live)
            if all(mark >= since for mark in live):
                return
            await asyncio.sleep(POLL)

    async def _marks(self) -> dict[str, float]:
        """The marks, read once a POLL however many labels wait (each would read them)."""
        loop = asyncio.get_running_loop()
        if self._read is None or loop.time() - self._read_at >= POLL:
            self._read_at, self.reads = loop.time(), self.reads + 1
            self._read = asyncio.ensure_future(self.state.written_marks())
            self._read.add_done_callback(_retrieved)
        return dict(await asyncio.shield(self._read))

    async def _beat(self) -> None:
        beats = 0
        while True:
            mark = self.clock()  # taken before the wait: answers sent later are not covered
            await self.written()
            try:
                await self.state.mark_written(self.name, mark)
                self.published += 1
                beats += 1
                if beats % PRUNE_EVERY == 0:
                    await self._prune()
            except StateError as exc:
                self._failed(exc)
            await asyncio.sleep(BEAT)

    async def _prune(self) -> None:
        marks = await self.state.written_marks()
        gone = [name for name, mark in marks.items() if mark < self.clock() - FORGET]
        if gone:
            await self.state.forget_writers(gone)

    def _failed(self, exc: StateError) -> None:
        if self.errors == 0:
            log.warning("record marks: %s (counted in /status, logged once)", exc)
        self.errors += 1
        self.last_error = str(exc)

    def status(self) -> dict[str, Any]:
        """Marks published, labels that waited for other processes, reads, failures."""
        return {
            "writer": self.name,
            "published": self.published,
            "other_writers": self.other_writers,
            "waits": self.waits,
            "reads": self.reads,
            "errors": self.errors,
            "last_error": self.last_error,
        }


def _retrieved(read: asyncio.Future[dict[str, float]]) -> None:
    if not read.cancelled():
        read.exception()  # every waiter may have gone before the read ended
