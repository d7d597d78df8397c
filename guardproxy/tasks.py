"""Background task helpers shared by the long-running parts (watcher, worker, engine, ...)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


def raise_if_cancelled() -> None:
    """End a loop whose task was cancelled even if the cancel itself was lost on the way.

    redis-py can answer a command whose task was cancelled meanwhile and drop the cancel:
    a loop that went on would make cancel_and_wait wait for it forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task (if any) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Progress:
    """A count that only grows, and a wait for it to reach a mark taken earlier."""

    __slots__ = ("_moved", "count")

    def __init__(self) -> None:
        self.count = 0
        self._moved: asyncio.Event | None = None  # only while someone waits

    def add(self, n: int) -> None:
        """Count `n` more; wake whoever waits to look again."""
        self.count += n
        if self._moved is not None:
            self._moved.set()
            self._moved = None

    async def reach(self, mark: int) -> None:
        """Return once the count is at least `mark`."""
        while self.count < mark:
            if self._moved is None:
                self._moved = asyncio.Event()
            await self._moved.wait()
