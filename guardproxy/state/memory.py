"""The embedded state backend: one process, records in a TTL cache, counters in dicts."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from cachetools import TTLCache

from ..monitors.fairness import GroupCounts
from ..snapshots import ThresholdTable
from .base import (
    DEFAULT_MAX_RECORDS,
    DEFAULT_TTL,
    GroupState,
    Joined,
    Outcome,
    PredictionRecord,
    bin_field,
)


class _Slot:
    """A stored record and, once joined, its label."""

    __slots__ = ("label", "record")

    def __init__(self, record: PredictionRecord) -> None:
        self.record = record
        self.label: int | None = None


class MemoryState:
    """State for a single replica; every call completes without yielding, so joins are atomic."""

    name = "memory"

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        max_records: int = DEFAULT_MAX_RECORDS,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records: TTLCache[str, _Slot] = TTLCache(max_records, ttl, timer=timer)
        self._groups: dict[tuple[str, str], GroupState] = {}
        self._thresholds: ThresholdTable | None = None

    async def record_predictions(self, records: Sequence[PredictionRecord]) -> None:
        """Keep records for the label join."""
        for record in records:
            self._records[record.request_id] = _Slot(record)

    async def join_label(self, request_id: str, label: int, observed_at: float) -> Joined:
        """Attach a label to a record; a second label is a duplicate."""
        slot = self._records.get(request_id)
        if slot is None:
            return Joined(Outcome.UNKNOWN)
        if slot.label is not None:
            return Joined(Outcome.DUPLICATE)
        slot.label = label
        return Joined(Outcome.JOINED, slot.record)

    async def join_labels(self, items: Sequence[tuple[str, int, float]]) -> list[Joined]:
        """join_label for many, in order."""
        return [await self.join_label(*item) for item in items]

    def _group(self, region: str, group: str) -> GroupState:
        return self._groups.setdefault((region, group), GroupState())

    async def add_counts(self, region: str, group: str, deltas: Mapping[str, int]) -> None:
        """Add to a (region, group)'s counters."""
        counts = self._group(region, group).counts
        for name, delta in deltas.items():
            setattr(counts, name, getattr(counts, name) + delta)

    async def add_histogram(
        self, region: str, group: str, label: int, bins: Mapping[int, int]
    ) -> None:
        """Add counts to histogram bins."""
        stored = self._group(region, group).bins
        for index, delta in bins.items():
            key = bin_field(label, index)
            stored[key] = stored.get(key, 0) + delta

    async def counts(self, region: str) -> dict[str, GroupState]:
        """Copies of every group's counters and bins of a region."""
        return {
            group: GroupState(GroupCounts(**state.counts.to_dict()), dict(state.bins))
            for (name, group), state in self._groups.items()
            if name == region
        }

    async def regions(self) -> list[str]:
        """Regions that have counters."""
        return sorted({region for region, _ in self._groups})

    async def save_thresholds(self, table: ThresholdTable) -> None:
        """Keep the learned table (for as long as this process lives)."""
        self._thresholds = table

    async def load_thresholds(self) -> ThresholdTable | None:
        """The kept table, if any."""
        return self._thresholds

    async def ping(self) -> bool:
        """Always reachable."""
        return True

    async def close(self) -> None:
        """Nothing to release."""

    def __len__(self) -> int:
        return len(self._records)
