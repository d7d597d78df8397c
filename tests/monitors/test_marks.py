"""WrittenMarks: each process's mark in the state backend, and a label's wait for the others'."""

from __future__ import annotations

import asyncio

import pytest

from guardproxy.monitors import marks as marks_module
from guardproxy.monitors.marks import FORGET, STALE, WrittenMarks, writer_name
from guardproxy.state import MemoryState
from guardproxy.state.base import StateError
from guardproxy.testing import eventually


async def nothing_pending() -> None:
    return None


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_wait_ends_once_every_other_live_mark_has_passed_its_start() -> None:
    state, clock = MemoryState(), Clock()
    marks = WrittenMarks(state, nothing_pending, name="here", clock=clock)
    await state.mark_written("here", 0.0)  # its own: the caller waited for it already
    await state.mark_written("gone", clock.now - STALE - 1)  # stopped without saying so
    await state.mark_written("behind", clock.now - 0.5)
    waiting = asyncio.create_task(marks.others_written(clock.now))
    await asyncio.sleep(3 * marks_module.POLL)
    assert not waiting.done() and marks.other_writers == 1
    await state.mark_written("behind", clock.now)
    await asyncio.wait_for(waiting, 5)
    assert marks.status()["waits"] == 1


async def test_labels_waiting_at_once_share_each_read_of_the_marks() -> None:
    state, clock = MemoryState(), Clock()
    marks = WrittenMarks(state, nothing_pending, name="here", clock=clock)
    await state.mark_written("behind", clock.now - 0.5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    waits = [asyncio.create_task(marks.others_written(clock.now)) for _ in range(50)]
    await asyncio.sleep(5 * marks_module.POLL)
    await state.mark_written("behind", clock.now)
    await asyncio.wait_for(asyncio.gather(*waits), 5)
    polls = (loop.time() - began) / marks_module.POLL
    assert marks.reads <= polls + 2  # 50 labels polling on their own: 50 times as many


async def test_a_process_marks_the_time_before_its_records_were_written() -> None:
    state, clock, gate = MemoryState(), Clock(), asyncio.Event()
    marks = WrittenMarks(state, gate.wait, name="here", clock=clock)
    marks.start()
    try:
        await asyncio.sleep(3 * marks_module.POLL)
        assert await state.written_marks() == {}  # its records are not written yet
        taken, clock.now = clock.now, clock.now + 5
        gate.set()
        await eventually(lambda: marks.published > 0)
        assert (await state.written_marks())["here"] == taken  # not the time it was published
    finally:
        await marks.stop()
    assert await state.written_marks() == {}  # stopped: no label waits for it any longer


async def test_marks_long_gone_are_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(marks_module, "PRUNE_EVERY", 1)
    state, clock = MemoryState(), Clock()
    await state.mark_written("old", clock.now - FORGET - 1)
    await state.mark_written("recent", clock.now - FORGET + 1)
    marks = WrittenMarks(state, nothing_pending, name="here", clock=clock)
    marks.start()
    try:
        await eventually(lambda: marks.published > 0)
        assert set(await state.written_marks()) == {"recent", "here"}
    finally:
        await marks.stop()


class Unreachable(MemoryState):
    async def written_marks(self) -> dict[str, float]:
        raise StateError("redis 127.0.0.1:1: connection refused")

    async def mark_written(self, writer: str, mark: float) -> None:
        raise StateError("redis 127.0.0.1:1: connection refused")


async def test_a_backend_that_fails_ends_the_wait_and_is_counted() -> None:
    marks = WrittenMarks(Unreachable(), nothing_pending, name="here")
    await asyncio.wait_for(marks.others_written(0.0), 5)
    marks.start()
    await eventually(lambda: marks.errors >= 2)
    await marks.stop()
    status = marks.status()
    assert status["published"] == 0 and "connection refused" in status["last_error"]


def test_every_process_has_its_own_name() -> None:
    assert writer_name() != writer_name()  # a restarted container may reuse host and pid
