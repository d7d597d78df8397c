"""The embedded state backend: one process, records in fixed arrays, counters in dicts."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from guardproxy.policy.thresholds import ModelKey, ThresholdTable
from guardproxy.state.base import (
    DEFAULT_MAX_RECORDS,
    DEFAULT_TTL,
    GroupState,
    Joined,
    PredictionRecord,
    Saved,
    Tallier,
)
from guardproxy.state.counts import GroupCounts
from guardproxy.state.recordstore import RecordStore


class MemoryState:
    """State for a single replica; every call completes without yielding, so joins are atomic."""

    name = "memory"

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        max_records: int = DEFAULT_MAX_RECORDS,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records = RecordStore(ttl, max_records, timer)
        # By model version first: the engine reads one version's groups every second, and a
        # scan of every version's groups held the loop ~10 ms at 300 models.
        self._groups: dict[ModelKey, dict[str, GroupState]] = {}
        self._thresholds: ThresholdTable | None = None
        self._secrets: dict[str, str] = {}
        self._marks: dict[str, float] = {}  # writer -> its records are written up to here

    async def record_predictions(self, records: Sequence[PredictionRecord]) -> int:
        """Keep records for the label join; how many ids were already in use."""
        return self._records.put_all(records)

    async def join_label(
        self, request_id: str, label: int, observed_at: float, tally: Tallier
    ) -> Joined:
        """Attach a label to a record and count it; a second label is a duplicate."""
        joined = self._records.join(request_id, label)
        record = joined.record
        if record is not None:  # counted in the same step, without yielding
            cell, bin_name = tally(record, label)
            self._add(record.key, record.group, {cell: 1}, {bin_name: 1})
        return joined

    async def join_labels(
        self, items: Sequence[tuple[str, int, float]], tally: Tallier
    ) -> list[Joined]:
        """join_label for many, in order."""
        return [await self.join_label(*item, tally) for item in items]

    def _add(
        self, key: ModelKey, group: str, counts: Mapping[str, int], bins: Mapping[str, int]
    ) -> None:
        groups = self._groups.get(key)
        if groups is None:
            groups = self._groups[key] = {}
        state = groups.get(group)
        if state is None:  # not setdefault: that would build a state to throw away each time
            state = groups[group] = GroupState()
        for name, delta in counts.items():
            setattr(state.counts, name, getattr(state.counts, name) + delta)
        for name, delta in bins.items():
            state.bins[name] = state.bins.get(name, 0) + delta

    async def add_counts(self, key: ModelKey, group: str, deltas: Mapping[str, int]) -> None:
        """Add to a model version's group's counters."""
        self._add(key, group, deltas, {})

    async def add_histogram(self, key: ModelKey, group: str, bins: Mapping[str, int]) -> None:
        """Add counts to histogram bins."""
        self._add(key, group, {}, bins)

    async def counts(self, key: ModelKey) -> dict[str, GroupState]:
        """Copies of every group's counters and bins of a model version."""
        return {
            group: GroupState(GroupCounts(**state.counts.to_dict()), dict(state.bins))
            for group, state in self._groups.get(key, {}).items()
        }

    async def keys(self) -> list[ModelKey]:
        """Model versions that have counters."""
        return sorted(self._groups)

    async def save_thresholds(self, table: ThresholdTable, expected: str | None) -> Saved:
        """Keep the table (as long as this process lives) if the kept one is `expected`."""
        kept = self._thresholds
        if (None if kept is None else kept.version) != expected:
            return Saved(False, kept)
        self._thresholds = table
        return Saved(True)

    async def load_thresholds(self) -> ThresholdTable | None:
        """The kept table, if any."""
        return self._thresholds

    async def shared_secret(self, name: str, candidate: str) -> str:
        """The secret kept under `name`, keeping `candidate` if there is none."""
        return self._secrets.setdefault(name, candidate)

    async def mark_written(self, writer: str, mark: float) -> None:
        """Keep the writer's mark."""
        self._marks[writer] = mark

    async def written_marks(self) -> dict[str, float]:
        """Every writer's last mark."""
        return dict(self._marks)

    async def forget_writers(self, writers: Sequence[str]) -> None:
        """Remove these writers' marks."""
        for writer in writers:
            self._marks.pop(writer, None)

    async def ping(self) -> bool:
        """Always reachable."""
        return True

    async def close(self) -> None:
        """Nothing to release."""

    def __len__(self) -> int:
        return len(self._records)
