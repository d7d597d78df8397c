"""The memory backend's prediction records: fixed arrays, no object per record.

A record's numbers live in preallocated `array` columns (read and written through
memoryviews) indexed by its slot in a ring (insertion order, which is expiry order since all
records share one TTL); its names (region, model, version, group, policy and threshold
versions) are one shared tuple per distinct combination. Ids are found through an
open-addressing table of slots keyed by two 64-bit hashes of the id (linear probing,
deletion by backward shift).

With 200,000 records kept as a dict of tuples, the records cost ~500 bytes each and a
process grew by ~100 MB while filling the cap; every record was also an object for the
garbage collector to look at until it learnt to untrack it. Here the cap's memory (~80 bytes
a record) is taken once, when the store is made, and the collector never sees a record.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable
from typing import cast

from guardproxy.state.base import Joined, Outcome, PredictionRecord

EMPTY = -1  # a table position holding no slot
NO_LABEL, CONTESTED = -1, -2  # label values besides 0 and 1
Names = tuple[str, str, str, str, str, str]  # region, model, version, group, policy, thresholds


def id_hash(request_id: str) -> tuple[int, int]:
    """Two 64-bit hashes of a request id (of the id, and of the id and a NUL), whatever its length.

    str hashes are keyed per process (SipHash, a random key unless PYTHONHASHSEED fixes it),
    so no client can choose ids that pile up on one probe run, as for any dict of strings; the
    pair makes two distinct ids alike only by chance (2**-128 a pair).
    """
    return hash(request_id), hash(request_id + "\0")


def _ints(code: str, value: int, size: int) -> memoryview:
    """An array of `size` integers of a type code, each `value`, seen through a memoryview:
    its items are set and read without the argument parsing an array's own indexing does."""
    return memoryview(array(code, [value]) * size)


def _floats(size: int) -> memoryview[float]:
    """An array of `size` zero doubles, seen through a memoryview (see _ints)."""
    return cast("memoryview[float]", memoryview(array("d", [0.0]) * size))


def _table_size(capacity: int) -> int:
    """A power of two at least twice the capacity: linear probes stay short."""
    size = 8
    while size < 2 * capacity:
        size *= 2
    return size


class NameTable:
    """Distinct name tuples shared by the records that carry them, counted to be released."""

    __slots__ = ("_free", "_ids", "_names", "_refs")

    def __init__(self) -> None:
        self._ids: dict[Names, int] = {}
        self._names: list[Names | None] = []
        self._refs: list[int] = []
        self._free: list[int] = []

    def acquire(self, names: Names) -> int:
        """The id of a name tuple, one more record holding it."""
        index = self._ids.get(names)
        if index is None:
            index = self._free.pop() if self._free else len(self._names)
            if index == len(self._names):
                self._names.append(names)
                self._refs.append(0)
            else:
                self._names[index] = names
            self._ids[names] = index
        self._refs[index] += 1
        return index

    def release(self, index: int) -> None:
        """One record fewer holds the tuple; forgotten when none does."""
        self._refs[index] -= 1
        if not self._refs[index]:
            names = self._names[index]
            assert names is not None
            del self._ids[names]
            self._names[index] = None
            self._free.append(index)

    def __getitem__(self, index: int) -> Names:
        names = self._names[index]
        assert names is not None
        return names

    def __len__(self) -> int:
        return len(self._ids)


class RecordStore:
    """Up to `max_records` records; the oldest are evicted first and expire after `ttl`."""

    __slots__ = (
        "_count",
        "_decision",
        "_expires",
        "_head",
        "_hi",
        "_label",
        "_lo",
        "_mask",
        "_name_of",
        "_names",
        "_score",
        "_table",
        "_threshold",
        "_time",
        "max_records",
        "timer",
        "ttl",
    )

    def __init__(self, ttl: float, max_records: int, timer: Callable[[], float]) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.ttl, self.max_records, self.timer = ttl, max_records, timer
        size = _table_size(max_records)
        self._mask = size - 1
        self._table = _ints("i", EMPTY, size)
        self._lo, self._hi = _ints("q", 0, max_records), _ints("q", 0, max_records)
        self._expires, self._time = _floats(max_records), _floats(max_records)
        self._score, self._threshold = _floats(max_records), _floats(max_records)
        self._decision, self._label = _ints("q", 0, max_records), _ints("q", 0, max_records)
        self._name_of = _ints("i", 0, max_records)
        self._names = NameTable()
        self._head = self._count = 0

    def put_all(self, records: Iterable[PredictionRecord]) -> int:
        """Keep records, evicting the oldest first; how many ids were already recorded."""
        now = self.timer()
        self._expire(now)
        expires, reused = now + self.ttl, 0
        table, los, his, mask = self._table, self._lo, self._hi, self._mask
        for record in records:
            lo, hi = id_hash(record.request_id)
            position = lo & mask
            while (slot := table[position]) != EMPTY:
                if los[slot] == lo and his[slot] == hi:
                    break
                position = (position + 1) & mask
            if slot != EMPTY:
                reused += 1
                if self._differs(slot, record):
                    self._label[slot] = CONTESTED
                continue
            if self._count >= self.max_records:
                self._evict()
                position = lo & mask  # the eviction may have moved entries up: probe again
                while table[position] != EMPTY:
                    position = (position + 1) & mask
            slot = (self._head + self._count) % self.max_records
            los[slot], his[slot] = lo, hi
            self._keep(slot, record, expires)
            table[position] = slot
            self._count += 1
        return reused

    def _keep(self, slot: int, record: PredictionRecord, expires: float) -> None:
        # Unpacked once: each of a tuple's fields read by name is a slower attribute lookup.
        _, time, region, model, version, group, score, decision, threshold, policy, thresholds = (
            record
        )
        self._expires[slot], self._time[slot] = expires, time
        self._score[slot], self._threshold[slot] = score, threshold
        self._decision[slot], self._label[slot] = decision, NO_LABEL
        self._name_of[slot] = self._names.acquire(
            (region, model, version, group, policy, thresholds)
        )

    def _differs(self, slot: int, record: PredictionRecord) -> bool:
        """Whether a prediction reusing a kept id is another one, not a retry of it."""
        region, model, version, group, _, _ = self._names[self._name_of[slot]]
        return (region, model, version, group, self._score[slot], self._decision[slot]) != (
            record.region, record.model, record.version, record.group, record.score,
            record.decision,
        )  # fmt: skip

    def join(self, request_id: str, label: int) -> Joined:
        """Attach a label once; a second label is a duplicate."""
        _, slot = self._find(*id_hash(request_id))
        if slot == EMPTY or self._expires[slot] <= self.timer():
            return Joined(Outcome.UNKNOWN)
        if self._label[slot] == CONTESTED:
            return Joined(Outcome.CONTESTED)
        if self._label[slot] != NO_LABEL:
            return Joined(Outcome.DUPLICATE)
        self._label[slot] = label
        region, model, version, group, policy, thresholds = self._names[self._name_of[slot]]
        # The id hashes to the record's, so it is the id the record was kept under.
        return Joined(Outcome.JOINED, PredictionRecord(
            request_id, self._time[slot], region, model, version, group, self._score[slot],
            self._decision[slot], self._threshold[slot], policy, thresholds,
        ))  # fmt: skip

    def _find(self, lo: int, hi: int) -> tuple[int, int]:
        """(table position, slot) of a hash; the slot is EMPTY and the position free if absent."""
        table, los, his, mask = self._table, self._lo, self._hi, self._mask
        position = lo & mask
        while True:
            slot = table[position]
            if slot == EMPTY or (los[slot] == lo and his[slot] == hi):
                return position, slot
            position = (position + 1) & mask

    def _expire(self, now: float) -> None:
        expires = self._expires
        while self._count and expires[self._head] <= now:
            self._evict()

    def _evict(self) -> None:
        """Forget the oldest record."""
        slot, table, mask = self._head, self._table, self._mask
        position = self._lo[slot] & mask
        while table[position] != slot:
            position = (position + 1) & mask
        self._unlink(position)
        self._names.release(self._name_of[slot])
        self._head = (slot + 1) % self.max_records
        self._count -= 1

    def _unlink(self, hole: int) -> None:
        """Empty a table position, moving up the entries of its run that probed past it."""
        table, los, mask = self._table, self._lo, self._mask
        position = hole
        while True:
            position = (position + 1) & mask
            slot = table[position]
            if slot == EMPTY:
                break
            # The entry may fill the hole when the hole lies between its home and where it is.
            if (position - (los[slot] & mask)) & mask >= (position - hole) & mask:
                table[hole] = slot
                hole = position
        table[hole] = EMPTY

    def __len__(self) -> int:
        return self._count
