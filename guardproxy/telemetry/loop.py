"""How late the event loop wakes a ticker, and how long the garbage collector pauses it.

Both are cheap enough to stay on always: a timer every 25 ms, and a callback per collection.
"""

from __future__ import annotations

import asyncio
import gc
from time import perf_counter, thread_time
from typing import Any

PAUSES = (0.005, 0.02, 0.1)  # seconds: pauses longer than these are counted


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class LoopLag:
    """A ticker measuring how late the loop runs it: the longest pause, recent and overall.

    A late tick waited for the rest of the loop iteration in progress: one long step, or,
    when every connection is busy, the iteration's whole batch of ready events.
    """

    def __init__(self, interval: float = 0.025, window: float = 10.0) -> None:
        self.interval, self.window = interval, window
        self.ticks = 0
        self.last = self.max = self.total = 0.0
        self.over = [0] * len(PAUSES)
        # Of the tick with the longest lag: the share of its wall time the loop's thread spent
        # on the CPU. Near 1: the loop itself was busy (a long step); near 0: the process was
        # not running (other work on the machine) or waited for the GIL.
        self.max_busy = 0.0
        self._recent = self._previous = 0.0  # the longest lag of this window and the one before
        self._window_end = 0.0
        self._expected = 0.0
        self._scheduled = self._cpu = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start ticking on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._window_end = perf_counter() + self.window
        self._schedule(perf_counter())

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._expected = now + self.interval
        self._scheduled, self._cpu = now, thread_time()
        self._handle = self._loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        now = perf_counter()
        lag = max(0.0, now - self._expected)
        self.ticks += 1
        self.last = lag
        self.total += lag
        if lag > self.max:
            self.max = lag
            self.max_busy = (thread_time() - self._cpu) / max(now - self._scheduled, 1e-9)
        if now > self._window_end:
            self._previous, self._recent = self._recent, 0.0
            self._window_end = now + self.window
        self._recent = max(self._recent, lag)
        for i, bound in enumerate(PAUSES):
            if lag > bound:
                self.over[i] += 1
        self._schedule(now)

    def stop(self) -> None:
        """Stop ticking."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def status(self) -> dict[str, Any]:
        """Lag in milliseconds: last, mean, max over the last 10-20 s and since start."""
        return {
            "interval_ms": _ms(self.interval),
            "ticks": self.ticks,
            "last_ms": _ms(self.last),
            "mean_ms": _ms(self.total / self.ticks) if self.ticks else 0.0,
            "recent_max_ms": _ms(max(self._recent, self._previous)),
            "max_ms": _ms(self.max),
            "max_busy": round(min(1.0, self.max_busy), 3),
            "over": {f"{_ms(bound):g}ms": n for bound, n in zip(PAUSES, self.over, strict=True)},
        }


class GcPauses:
    """Collections per generation and the longest pause each caused (gc.callbacks).

    Each pause is timed on the wall clock and on the thread's CPU clock: on a busy machine a
    collection can be descheduled midway, and only the CPU time is the collector's own work.
    """

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self.longest_cpu = [0.0, 0.0, 0.0]
        self.seconds = 0.0
        self.frozen = 0
        self._began = self._began_cpu = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began, self._began_cpu = perf_counter(), thread_time()
            return
        took, cpu = perf_counter() - self._began, thread_time() - self._began_cpu
        generation = info.get("generation", 2)
        self.collections[generation] += 1
        self.seconds += took
        if took > self.longest[generation]:
            self.longest[generation] = took
        if cpu > self.longest_cpu[generation]:
            self.longest_cpu[generation] = cpu

    def start(self) -> None:
        """Watch every collection (startup has frozen what it built: count it once)."""
        # get_freeze_count walks every frozen object: ~7 ms of the loop for each /status.
        self.frozen = gc.get_freeze_count()
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        """Stop watching."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def status(self) -> dict[str, Any]:
        """Collections, the longest pause per generation, and the thresholds in force."""
        return {
            "thresholds": list(gc.get_threshold()),
            "frozen": self.frozen,
            "collections": list(self.collections),
            "longest_ms": [_ms(s) for s in self.longest],
            "longest_cpu_ms": [_ms(s) for s in self.longest_cpu],
            "total_ms": _ms(self.seconds),
        }
