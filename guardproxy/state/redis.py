"""State shared by every replica through Redis: records as expiring hashes, fleet-wide counters."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from guardproxy.masking import mask_url
from guardproxy.policy.thresholds import ThresholdTable
from guardproxy.state.base import (
    DEFAULT_TTL,
    GroupState,
    Joined,
    Outcome,
    PredictionRecord,
    StateError,
    bin_field,
    hash_fields,
    table_from_json,
    table_to_json,
)
from guardproxy.state.counts import GroupCounts

T = TypeVar("T")
DEFAULT_PREFIX = "guardproxy:"
SEP = "|"  # group names may hold ":", field names never hold "|"

# Claims the label slot with HSETNX so that two replicas racing on one id join it once.
JOIN_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if redis.call('HSETNX', KEYS[1], 'label', ARGV[1]) == 0 then return {2} end
redis.call('HSET', KEYS[1], 'observed_at', ARGV[2])
local fields = redis.call('HGETALL', KEYS[1])
table.insert(fields, 1, 1)
return fields
"""


class RedisState:
    """State in Redis; every failure surfaces as a StateError after a short timeout."""

    name = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        ttl: float = DEFAULT_TTL,
        timeout: float = 0.5,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.ttl = max(1, int(ttl))
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._join = self._redis.register_script(JOIN_SCRIPT)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def _call(self, action: Awaitable[T]) -> T:
        try:
            return await action
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateError(f"redis {mask_url(self.url)}: {mask_url(str(exc))}") from exc

    async def record_predictions(self, records: Sequence[PredictionRecord]) -> None:
        """Write records as hashes with EXPIRE, in one pipeline."""
        if not records:
            return
        pipe = self._redis.pipeline(transaction=False)
        for record in records:
            key = self._key("pred", record.request_id)
            pipe.hset(key, mapping=dict[Any, Any](record.to_fields()))
            pipe.expire(key, self.ttl)
        await self._call(pipe.execute())

    async def join_label(self, request_id: str, label: int, observed_at: float) -> Joined:
        """Attach a label atomically (Lua): unknown, duplicate, or joined with its record."""
        return (await self.join_labels([(request_id, label, observed_at)]))[0]

    async def join_labels(self, items: Sequence[tuple[str, int, float]]) -> list[Joined]:
        """Join many labels in one pipeline, in order."""
        if not items:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for request_id, label, observed_at in items:
            keys = [self._key("pred", request_id)]
            await self._join(keys=keys, args=[label, repr(observed_at)], client=pipe)
        replies = await self._call(pipe.execute())
        return [_joined(reply) for reply in replies]

    async def add_counts(self, region: str, group: str, deltas: Mapping[str, int]) -> None:
        """HINCRBY the (region, group) counters, so every replica sees the fleet's totals."""
        await self._increment("counts", region, group, {k: v for k, v in deltas.items() if v})

    async def add_histogram(
        self, region: str, group: str, label: int, bins: Mapping[int, int]
    ) -> None:
        """HINCRBY histogram bins."""
        fields = {bin_field(label, i): n for i, n in bins.items() if n}
        await self._increment("hist", region, group, fields)

    async def _increment(self, kind: str, region: str, group: str, fields: dict[str, int]) -> None:
        if not fields:
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.sadd(self._key("regions"), region)
        key = self._key(kind, region)
        for name, delta in fields.items():
            pipe.hincrby(key, f"{group}{SEP}{name}", delta)
        await self._call(pipe.execute())

    async def counts(self, region: str) -> dict[str, GroupState]:
        """Every group's counters and bins of a region, read in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self._key("counts", region))
        pipe.hgetall(self._key("hist", region))
        counts, hist = await self._call(pipe.execute())
        return _group_states(counts, hist)

    async def regions(self) -> list[str]:
        """Regions that have counters anywhere in the fleet."""
        members = await self._call(self._redis.smembers(self._key("regions")))
        return sorted(m if isinstance(m, str) else m.decode() for m in members)

    async def save_thresholds(self, table: ThresholdTable) -> None:
        """Store the learned table (no expiry)."""
        await self._call(self._redis.set(self._key("thresholds"), table_to_json(table)))

    async def load_thresholds(self) -> ThresholdTable | None:
        """The stored table, if any."""
        text = await self._call(self._redis.get(self._key("thresholds")))
        return None if text is None else table_from_json(text)

    async def shared_secret(self, name: str, candidate: str) -> str:
        """SET NX the candidate, then GET whichever value won, in one MULTI/EXEC."""
        key = self._key("secret", name)
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(key, candidate, nx=True)
        pipe.get(key)
        _, value = await self._call(pipe.execute())
        if not isinstance(value, str) or not value:
            raise StateError(f"secret {name!r} is missing after SET NX")
        return value

    async def ping(self) -> bool:
        """Whether Redis answers a PING in time."""
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def _joined(reply: Any) -> Joined:
    if isinstance(reply, Exception):
        raise StateError(f"label join failed: {reply}")
    code = int(reply[0])
    if code == 0:
        return Joined(Outcome.UNKNOWN)
    if code == 2:
        return Joined(Outcome.DUPLICATE)
    fields = dict(zip(reply[1::2], reply[2::2], strict=True))
    return Joined(Outcome.JOINED, PredictionRecord.from_fields(fields))


def _group_states(counts: Mapping[str, str], hist: Mapping[str, str]) -> dict[str, GroupState]:
    raw: dict[str, dict[str, int]] = {}
    for field, value in counts.items():
        group, _, name = field.rpartition(SEP)
        raw.setdefault(group, {})[name] = int(value)
    states = {g: GroupState(GroupCounts.from_dict(hash_fields(v))) for g, v in raw.items()}
    for field, value in hist.items():
        group, _, name = field.rpartition(SEP)
        states.setdefault(group, GroupState()).bins[name] = int(value)
    return states
