"""Both state backends behind one fixture: every state test runs against memory and real Redis."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from guardproxy.monitors.records import label_tally
from guardproxy.state import MemoryState, PredictionRecord, StateBackend
from guardproxy.state.base import Tally
from guardproxy.state.redis import RedisState

REDIS_URL = "redis://127.0.0.1:6379/0"


def tally(record: PredictionRecord, label: int) -> Tally:
    """How the tests count a joined label: 100 bins over [0, 1]."""
    return label_tally(record, label, (100, 0.0, 1.0))


async def drop_prefix(prefix: str) -> None:
    """Delete every key under a prefix."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses."""
    return f"gp-test-{os.urandom(4).hex()}:"


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[StateBackend]:
    """A fresh backend of each kind."""
    if request.param == "memory":
        yield MemoryState()
        return
    backend = RedisState(REDIS_URL, prefix=redis_prefix)
    try:
        yield backend
    finally:
        await backend.close()
        await drop_prefix(redis_prefix)
