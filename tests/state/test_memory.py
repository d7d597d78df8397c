"""What only the memory backend does: its time to live and size bound."""

from __future__ import annotations

from guardproxy.state import MemoryState, Outcome, PredictionRecord


def record(request_id: str) -> PredictionRecord:
    return PredictionRecord(request_id, 0.0, "eu", "m", "", "a", 0.5, 1, 0.5, "p", "static")


async def test_records_expire_after_their_ttl() -> None:
    now = [0.0]
    state = MemoryState(ttl=10.0, timer=lambda: now[0])
    await state.record_predictions([record("r1")])
    now[0] = 11.0
    assert (await state.join_label("r1", 1, 0.0)).outcome is Outcome.UNKNOWN


async def test_size_bound_evicts_the_oldest() -> None:
    state = MemoryState(max_records=3)
    await state.record_predictions([record(f"r{i}") for i in range(5)])
    assert len(state) == 3
    assert (await state.join_label("r0", 1, 0.0)).outcome is Outcome.UNKNOWN
    assert (await state.join_label("r4", 1, 0.0)).outcome is Outcome.JOINED
