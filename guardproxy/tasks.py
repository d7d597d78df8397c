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
