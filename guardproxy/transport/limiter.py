"""Concurrency per key: a slot per request, a bounded wait queue, a bounded wait."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from .errors import UpstreamError


class _Slots:
    __slots__ = ("active", "waiters")

    def __init__(self) -> None:
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()


class KeyLimiter:
    """At most `limit` slots per key; up to `queue` callers wait, each at most `timeout` s."""

    def __init__(self, limit: int, queue: int, timeout: float) -> None:
        self.limit = limit
        self.queue = queue
        self.timeout = timeout
        self._keys: dict[str, _Slots] = {}

    def try_acquire(self, key: str) -> bool:
        """Take a slot without waiting, if one is free and nobody is queued."""
        slots = self._keys.get(key)
        if slots is None:
            slots = self._keys[key] = _Slots()
        if slots.active < self.limit and not slots.waiters:
            slots.active += 1
            return True
        return False

    async def acquire(self, key: str) -> None:
        """Wait for a slot; UpstreamError 503 when the queue is full or the wait too long."""
        if self.try_acquire(key):
            return
        slots = self._keys[key]
        if len(slots.waiters) >= self.queue:
            raise UpstreamError(503, "busy", "too many requests waiting for the upstream")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        slots.waiters.append(waiter)
        timer = loop.call_later(self.timeout, _expire, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(key)  # the slot was handed over just as the caller gave up
            raise
        except TimeoutError:
            raise UpstreamError(503, "busy", "timed out waiting for an upstream slot") from None
        finally:
            timer.cancel()
            if waiter in slots.waiters:
                slots.waiters.remove(waiter)

    def release(self, key: str) -> None:
        """Give a slot back: to the first caller still waiting, else to the pool."""
        slots = self._keys.get(key)
        if slots is None:
            return
        while slots.waiters:
            waiter = slots.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; `active` is unchanged
                return
        slots.active -= 1
        if slots.active <= 0:
            del self._keys[key]

    def as_dict(self) -> dict[str, Any]:
        """Active and waiting requests per key."""
        return {
            key: {"active": s.active, "waiting": len(s.waiters)} for key, s in self._keys.items()
        }


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
