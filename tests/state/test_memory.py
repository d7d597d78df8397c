"""What only the memory backend does: its time to live and size bound."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest

from guardproxy.state import MemoryState, Outcome, PredictionRecord
from guardproxy.state.recordstore import NameTable
from tests.state.conftest import tally


def record(request_id: str, group: str = "a", score: float = 0.5) -> PredictionRecord:
    return PredictionRecord(request_id, 0.0, "eu", "m", "", group, score, 1, 0.5, "p", "static")


async def test_records_expire_after_their_ttl() -> None:
    now = [0.0]
    state = MemoryState(ttl=10.0, timer=lambda: now[0])
    await state.record_predictions([record("r1")])
    now[0] = 11.0
    assert (await state.join_label("r1", 1, 0.0, tally)).outcome is Outcome.UNKNOWN


async def test_size_bound_evicts_the_oldest() -> None:
    state = MemoryState(max_records=3)
    await state.record_predictions([record(f"r{i}") for i in range(5)])
    assert len(state) == 3
    assert (await state.join_label("r0", 1, 0.0, tally)).outcome is Outcome.UNKNOWN
    assert (await state.join_label("r4", 1, 0.0, tally)).outcome is Outcome.JOINED


async def test_records_match_an_ordered_dict_through_evictions_and_expiry() -> None:
    """Random puts, joins and clock steps against the plain model the store implements."""
    rng = random.Random(7)
    now = [0.0]
    state = MemoryState(ttl=50.0, max_records=13, timer=lambda: now[0])
    # id: (expires, record, labeled, contested)
    model: OrderedDict[str, tuple[float, PredictionRecord, bool, bool]] = OrderedDict()
    for step in range(20_000):
        now[0] += rng.choice((0.0, 0.0, 0.5, 3.0))
        rid = f"r{rng.randrange(60)}"
        if rng.random() < 0.6:
            while model and next(iter(model.values()))[0] <= now[0]:
                model.popitem(last=False)  # a put drops what has expired
            kept = record(rid, group=f"g{step % 3}", score=rng.choice((0.25, 0.5)))
            reused = await state.record_predictions([kept])
            assert reused == (rid in model)
            if rid in model:
                expires, first, labeled, contested = model[rid]
                model[rid] = (expires, first, labeled, contested or first != kept)
            else:
                while len(model) >= 13:
                    model.popitem(last=False)
                model[rid] = (now[0] + 50.0, kept, False, False)
        else:
            joined = await state.join_label(rid, 1, 0.0, tally)
            if rid not in model or model[rid][0] <= now[0]:
                assert joined.outcome is Outcome.UNKNOWN
            elif model[rid][3]:
                assert joined.outcome is Outcome.CONTESTED
            elif model[rid][2]:
                assert joined.outcome is Outcome.DUPLICATE
            else:
                assert joined.outcome is Outcome.JOINED and joined.record == model[rid][1]
                model[rid] = (*model[rid][:2], True, False)
        assert len(state) == len(model)


def test_name_tuples_are_shared_and_released() -> None:
    names = NameTable()
    a, b = ("eu", "m", "1", "a", "p", "t"), ("eu", "m", "1", "b", "p", "t")
    first = names.acquire(a)
    assert names.acquire(a) == first and names.acquire(b) != first
    names.release(first)
    assert len(names) == 2
    names.release(first)
    assert len(names) == 1
    c = ("eu", "m", "2", "a", "p", "t")
    assert names.acquire(c) == first and names[first] == c


def test_a_store_holds_at_least_one_record() -> None:
    with pytest.raises(ValueError):
        MemoryState(max_records=0)
