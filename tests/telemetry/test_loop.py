"""The loop-lag ticker and the GC pause counter: what they report after a known pause."""

from __future__ import annotations

import asyncio
import gc
import time

import aiohttp
import pytest

from guardproxy.telemetry.loop import GcPauses, LoopLag
from guardproxy.testing import RunningProxy, eventually


async def test_a_blocked_loop_shows_as_lag() -> None:
    lag = LoopLag(interval=0.005)
    lag.start()
    await eventually(lambda: lag.ticks >= 3)
    end = time.perf_counter() + 0.05
    while time.perf_counter() < end:  # holds the loop, as a long synchronous step would
        pass
    await eventually(lambda: lag.status()["max_ms"] >= 40)
    status = lag.status()
    lag.stop()
    assert status["recent_max_ms"] >= 40
    # The loop's own thread was running (a long step), if not all the time on a busy machine;
    # a sleeping thread (below) scores near 0.
    assert status["max_busy"] > 0.25
    assert status["over"]["5ms"] >= 1 and status["over"]["20ms"] >= 1
    ticks = lag.ticks
    await asyncio.sleep(0.03)
    assert lag.ticks == ticks  # stopped


async def test_a_loop_that_was_not_running_is_told_apart() -> None:
    lag = LoopLag(interval=0.005)
    lag.start()
    await eventually(lambda: lag.ticks >= 3)
    time.sleep(0.05)  # noqa: ASYNC251 - the thread is off the CPU, as when preempted
    await eventually(lambda: lag.status()["max_ms"] >= 40)
    lag.stop()
    assert lag.status()["max_busy"] < 0.5


def test_collections_are_counted_per_generation() -> None:
    pauses = GcPauses()
    pauses.start()
    try:
        gc.collect()
        gc.collect(0)
    finally:
        pauses.stop()
    status = pauses.status()
    assert status["collections"][2] >= 1 and status["collections"][0] >= 1
    assert status["longest_ms"][2] > 0
    assert status["longest_cpu_ms"][2] > 0  # the collector's own work, off the wall clock
    assert len(status["thresholds"]) == 3


def test_frozen_objects_are_counted_once_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses = GcPauses()
    pauses.start()
    counted = pauses.frozen
    pauses.stop()

    def walk() -> int:  # it walks every frozen object: never again for a /status
        raise AssertionError("counted the frozen objects again")

    monkeypatch.setattr(gc, "get_freeze_count", walk)
    assert pauses.status()["frozen"] == counted


async def test_status_reports_the_loop_and_the_collector(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    await eventually(lambda: proxy.runtime.loop_lag.ticks > 0)
    async with client.get(f"{proxy.admin_url}/status") as response:
        loop = (await response.json())["loop"]
    assert loop["lag"]["ticks"] > 0 and loop["lag"]["interval_ms"] == 25
    assert loop["gc"]["thresholds"][0] >= 3_000  # young collections made rarer at start
    assert loop["gc"]["frozen"] > 0  # what startup built is kept out of collections
