"""State shared by every replica through Redis: records as expiring hashes, fleet-wide counters."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from guardproxy.masking import mask_url
from guardproxy.policy.thresholds import ModelKey, ThresholdTable
from guardproxy.state.base import (
    DEFAULT_TTL,
    PREDICTION_IDENTITY,
    GroupState,
    Joined,
    Outcome,
    PredictionRecord,
    Saved,
    StateError,
    Tallier,
    key_of_text,
    key_text,
    record_key,
    table_from_json,
    table_to_json,
)
from guardproxy.state.counts import GroupCounts

T = TypeVar("T")
ScriptCall = tuple[AsyncScript, Sequence[str], Sequence[Any]]  # a script, its keys and args
DEFAULT_PREFIX = "guardproxy:"
SEP = "|"  # group names may hold ":", field names never hold "|"

# Claims the label slot with HSETNX, so that two replicas racing on one id join it once, and
# counts the label in the same script: Redis runs it whole or not at all, so a label is never
# claimed without being counted (a timed-out call that did run still counted it).
# KEYS: the record, the model version's counters, its histogram bins, the set of models.
# ARGV: label, observed_at, the counter field, the bin field, the model's key text.
JOIN_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'contested') == 1 then return 3 end
if redis.call('HSETNX', KEYS[1], 'label', ARGV[1]) == 0 then return 2 end
redis.call('HSET', KEYS[1], 'observed_at', ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
redis.call('SADD', KEYS[4], ARGV[5])
return 1
"""
OUTCOMES = {0: Outcome.UNKNOWN, 2: Outcome.DUPLICATE, 3: Outcome.CONTESTED}

# Many records in one call: KEYS one per record, ARGV the TTL, then each record's values as a
# JSON array of strings (one argument a record: packing arguments is most of the client's
# cost). The first prediction under an id is kept: a reused id never overwrites it, and
# makes it contested when its prediction is another one.
FIELDS = PredictionRecord._fields
IDENTITY = [FIELDS.index(name) + 1 for name in PREDICTION_IDENTITY]  # what a retry repeats
RECORD_SCRIPT = f"""
local ttl, reused = ARGV[1], 0
local names = {{{", ".join(f"'{name}'" for name in FIELDS)}}}
for i, key in ipairs(KEYS) do
  local values = cjson.decode(ARGV[i + 1])
  if redis.call('EXISTS', key) == 1 then
    reused = reused + 1
    for _, j in ipairs({{{", ".join(map(str, IDENTITY))}}}) do
      if redis.call('HGET', key, names[j]) ~= values[j] then
        redis.call('HSET', key, 'contested', 1)
        break
      end
    end
  else
    local fields = {{}}
    for j, name in ipairs(names) do
      fields[2 * j - 1], fields[2 * j] = name, values[j]
    end
    redis.call('HSET', key, unpack(fields))
    redis.call('EXPIRE', key, ttl)
  end
end
return reused
"""
RECORDS_A_CALL = 256

# Stores the threshold table only if the stored one is the version the replica last read
# ('' for none), else answers the stored one: the last replica to save must not win over a
# table it never saw. Saves are rare (one per calibration), so decoding the stored JSON here
# costs less than keeping its version in a second key that could disagree with it.
# KEYS: the table. ARGV: the version expected, the new table's JSON.
SAVE_SCRIPT = """
local stored = redis.call('GET', KEYS[1])
local version = ''
if stored then
  local ok, doc = pcall(cjson.decode, stored)
  version = ok and type(doc) == 'table' and doc.version or false
end
if version ~= ARGV[1] then return {0, stored} end
redis.call('SET', KEYS[1], ARGV[2])
return {1}
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
        self._record = self._redis.register_script(RECORD_SCRIPT)
        self._save = self._redis.register_script(SAVE_SCRIPT)
        self._table: ThresholdTable | None = None
        self._table_text: str | bytes | None = None

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def _call(self, action: Awaitable[T]) -> T:
        try:
            return await action
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateError(f"redis {mask_url(self.url)}: {mask_url(str(exc))}") from exc

    async def record_predictions(self, records: Sequence[PredictionRecord]) -> int:
        """Write records as expiring hashes, RECORDS_A_CALL to a script call, in one pipeline;
        how many ids were already in use."""
        if not records:
            return 0
        calls: list[ScriptCall] = []
        for start in range(0, len(records), RECORDS_A_CALL):
            chunk = records[start : start + RECORDS_A_CALL]
            keys = [self._key("pred", record_key(r.request_id)) for r in chunk]
            args = [self.ttl, *(orjson.dumps([str(v) for v in r]) for r in chunk)]
            calls.append((self._record, keys, args))
        replies = await self._call(self._scripts(calls))
        return sum(int(reply) for reply in replies)

    async def _scripts(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Each script call's reply, all in one round trip (EVALSHA in a pipeline).

        redis-py asks the server whether a pipeline's scripts are loaded before every
        pipeline: a second round trip each time. Here only calls the server answers NOSCRIPT
        (it restarted, or flushed its scripts) are sent again, once the scripts are loaded:
        none of them ran, and the calls that did run are not repeated.
        """
        replies = await self._evalshas(calls)
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost:
            for script in {calls[i][0] for i in lost}:
                script.sha = await self._redis.script_load(script.script)
            for i, reply in zip(lost, await self._evalshas([calls[i] for i in lost]), strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _evalshas(self, calls: Sequence[ScriptCall]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def join_label(
        self, request_id: str, label: int, observed_at: float, tally: Tallier
    ) -> Joined:
        """Attach a label and count it atomically (Lua): unknown, duplicate, or joined."""
        return (await self.join_labels([(request_id, label, observed_at)], tally))[0]

    async def join_labels(
        self, items: Sequence[tuple[str, int, float]], tally: Tallier
    ) -> list[Joined]:
        """Read the records in one round trip, then claim and count each label in another."""
        if not items:
            return []
        keys = [self._key("pred", record_key(request_id)) for request_id, _, _ in items]
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        results = [_read(fields) for fields in await self._call(pipe.execute())]
        claims = [i for i, joined in enumerate(results) if joined.record is not None]
        if not claims:
            return results
        calls: list[ScriptCall] = []
        for i in claims:
            record = results[i].record
            assert record is not None
            calls.append(self._claim(keys[i], record, items[i], tally))
        for i, reply in zip(claims, await self._call(self._scripts(calls)), strict=True):
            if int(reply) != 1:  # the record expired, or was labeled or contested, in between
                results[i] = Joined(OUTCOMES[int(reply)])
        return results

    def _claim(
        self, key: str, record: PredictionRecord, item: tuple[str, int, float], tally: Tallier
    ) -> ScriptCall:
        """The script call that claims one record's label and counts it."""
        _, label, observed_at = item
        cell, bin_name = tally(record, label)
        owner = key_text(record.key)
        keys = [key, self._key("counts", owner), self._key("hist", owner), self._key("models")]
        group = record.group
        args = [label, repr(observed_at), f"{group}{SEP}{cell}", f"{group}{SEP}{bin_name}", owner]
        return (self._join, keys, args)

    async def add_counts(self, key: ModelKey, group: str, deltas: Mapping[str, int]) -> None:
        """HINCRBY a model version's group counters, so every replica sees the fleet's totals."""
        await self._increment("counts", key, group, {k: v for k, v in deltas.items() if v})

    async def add_histogram(self, key: ModelKey, group: str, bins: Mapping[str, int]) -> None:
        """HINCRBY histogram bins."""
        await self._increment("hist", key, group, {k: n for k, n in bins.items() if n})

    async def _increment(
        self, kind: str, owner: ModelKey, group: str, fields: dict[str, int]
    ) -> None:
        if not fields:
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.sadd(self._key("models"), key_text(owner))
        key = self._key(kind, key_text(owner))
        for name, delta in fields.items():
            pipe.hincrby(key, f"{group}{SEP}{name}", delta)
        await self._call(pipe.execute())

    async def counts(self, key: ModelKey) -> dict[str, GroupState]:
        """Every group's counters and bins of a model version, read in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self._key("counts", key_text(key)))
        pipe.hgetall(self._key("hist", key_text(key)))
        counts, hist = await self._call(pipe.execute())
        return _group_states(counts, hist)

    async def keys(self) -> list[ModelKey]:
        """Model versions that have counters anywhere in the fleet."""
        members = await self._call(self._redis.smembers(self._key("models")))
        return sorted(key_of_text(str(m)) for m in members)

    async def save_thresholds(self, table: ThresholdTable, expected: str | None) -> Saved:
        """Store the table (no expiry) if the stored one is `expected`, in one script."""
        keys = [self._key("thresholds")]
        reply = await self._call(self._save(keys=keys, args=[expected or "", table_to_json(table)]))
        if int(reply[0]) == 1:
            return Saved(True)
        stored = reply[1] if len(reply) > 1 else None
        return Saved(False, None if stored is None else table_from_json(stored))

    async def load_thresholds(self) -> ThresholdTable | None:
        """The stored table, if any (parsed again only when its text changed)."""
        text = await self._call(self._redis.get(self._key("thresholds")))
        if text is None:
            return None
        # every replica reads the table each second: a pod of many models would parse the
        # same JSON (~3 ms for 900 rules) on its event loop each time
        if text != self._table_text:
            self._table, self._table_text = table_from_json(text), text
        return self._table

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

    async def mark_written(self, writer: str, mark: float) -> None:
        """HSET the writer's mark."""
        await self._call(self._redis.hset(self._key("writers"), writer, repr(mark)))

    async def written_marks(self) -> dict[str, float]:
        """HGETALL the marks (a field that is not a number is left out)."""
        fields = await self._call(self._redis.hgetall(self._key("writers")))
        marks = {}
        for writer, text in fields.items():
            try:
                marks[str(writer)] = float(text)
            except ValueError:
                continue
        return marks

    async def forget_writers(self, writers: Sequence[str]) -> None:
        """HDEL these writers' marks."""
        if writers:
            await self._call(self._redis.hdel(self._key("writers"), *writers))

    async def ping(self) -> bool:
        """Whether Redis answers a PING in time."""
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def _read(fields: Mapping[str, str]) -> Joined:
    """What a record's fields, as read before the claim, allow: unknown, contested,
    duplicate, or a record a label may join (JOINED once the claim succeeds)."""
    if not fields:
        return Joined(Outcome.UNKNOWN)
    if "contested" in fields:
        return Joined(Outcome.CONTESTED)
    if "label" in fields:
        return Joined(Outcome.DUPLICATE)
    return Joined(Outcome.JOINED, PredictionRecord.from_fields(fields))


def _group_states(counts: Mapping[str, str], hist: Mapping[str, str]) -> dict[str, GroupState]:
    raw: dict[str, dict[str, int]] = {}
    for field, value in counts.items():
        group, _, name = field.rpartition(SEP)
        raw.setdefault(group, {})[name] = int(value)
    states = {g: GroupState(GroupCounts.from_dict(v)) for g, v in raw.items()}
    for field, value in hist.items():
        group, _, name = field.rpartition(SEP)
        states.setdefault(group, GroupState()).bins[name] = int(value)
    return states
