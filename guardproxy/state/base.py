"""The state backend contract: prediction records, label joins, per-group counters, thresholds."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from guardproxy.policy.thresholds import ModelKey, ThresholdRule, ThresholdTable
from guardproxy.state.counts import GroupCounts

DEFAULT_TTL = 24 * 3600.0
DEFAULT_MAX_RECORDS = 200_000


class StateError(Exception):
    """The state backend could not complete a call (unreachable, timed out, bad data)."""


class Outcome(StrEnum):
    """What joining a label to a prediction did."""

    JOINED = "joined"
    UNKNOWN = "unknown"
    DUPLICATE = "duplicate"
    CONTESTED = "contested"  # the id was given to two different predictions: no label joins


# The fields a retry of a prediction repeats: another value under the same id is another
# prediction, and contests the id.
PREDICTION_IDENTITY = ("region", "model", "version", "group", "score", "decision")


class PredictionRecord(NamedTuple):
    """One decided row, kept until its label arrives or its time to live ends.

    A tuple: the monitors make one per decided row, and a frozen dataclass sets each field
    through object.__setattr__ (~2 µs a record, against ~0.4).
    """

    request_id: str
    time: float
    region: str
    model: str
    version: str
    group: str
    score: float
    decision: int
    threshold: float
    policy_version: str
    threshold_version: str

    @property
    def key(self) -> ModelKey:
        """(region, model, version): whose counters the label goes to."""
        return (self.region, self.model, self.version)

    def to_fields(self) -> dict[str, str]:
        """Flat string fields, as stored in a Redis hash."""
        return {k: str(v) for k, v in self._asdict().items()}

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> PredictionRecord:
        """Read back `to_fields` (unknown keys ignored)."""
        return cls(
            request_id=fields["request_id"],
            time=float(fields["time"]),
            region=fields["region"],
            model=fields["model"],
            version=fields["version"],
            group=fields["group"],
            score=float(fields["score"]),
            decision=int(fields["decision"]),
            threshold=float(fields["threshold"]),
            policy_version=fields["policy_version"],
            threshold_version=fields["threshold_version"],
        )


class Tally(NamedTuple):
    """What one joined label adds to its model version's group: a confusion cell and a bin."""

    cell: str  # tp, fp, tn or fn: the decision made against the label
    bin: str  # "p:<i>" (label 1) or "n:<i>": the score's histogram bin


# How a joined label is counted: the monitors know each model's histogram layout.
Tallier = Callable[[PredictionRecord, int], Tally]


@dataclass(frozen=True, slots=True)
class Joined:
    """The result of one label join; `record` is set when the outcome is JOINED."""

    outcome: Outcome
    record: PredictionRecord | None = None


@dataclass(frozen=True, slots=True)
class Saved:
    """What a compare-and-set save of the threshold table did."""

    ok: bool  # stored; else refused: the stored table was not the one expected
    stored: ThresholdTable | None = None  # when refused, the table stored instead (None: none)


@dataclass(slots=True)
class GroupState:
    """A (region, group)'s counters and label-split histogram bins ("p:17", "n:17")."""

    counts: GroupCounts = field(default_factory=GroupCounts)
    bins: dict[str, int] = field(default_factory=dict)


class StateBackend(Protocol):
    """Where records, counters and learned thresholds live: one process or the whole fleet."""

    name: str

    async def record_predictions(self, records: Sequence[PredictionRecord]) -> int:
        """Keep records for the label join; an id already recorded keeps its first record.

        A record under a kept id that is another prediction (model, version, group, score or
        decision differ; not a retry) makes the id contested: no label joins it, for the
        label's sender cannot have meant both. Returns how many records reused an id.
        """

    async def join_label(
        self, request_id: str, label: int, observed_at: float, tally: Tallier
    ) -> Joined:
        """Attach a label to a record and count it (`tally`'s cell and bin) in one atomic step.

        A label is counted exactly when it is claimed: a second label for an id never counts,
        and a failure (even one whose answer was lost) never leaves a label claimed but
        uncounted, which a retry would then only see as a duplicate.
        """

    async def join_labels(
        self, items: Sequence[tuple[str, int, float]], tally: Tallier
    ) -> list[Joined]:
        """join_label for many (request_id, label, observed_at), in order."""

    async def add_counts(self, key: ModelKey, group: str, deltas: Mapping[str, int]) -> None:
        """Add to a model version's group's GroupCounts fields."""

    async def add_histogram(self, key: ModelKey, group: str, bins: Mapping[str, int]) -> None:
        """Add to histogram bins, named "p:<i>" (label 1) and "n:<i>" (label 0)."""

    async def counts(self, key: ModelKey) -> dict[str, GroupState]:
        """Every group's counters and histogram bins of a model version."""

    async def keys(self) -> list[ModelKey]:
        """Model versions that have counters."""

    async def save_thresholds(self, table: ThresholdTable, expected: str | None) -> Saved:
        """Store the table if the stored one's version is still `expected` (None: no table).

        Replicas share one table: a replica that calibrated from an older table than the one
        stored gets the stored one back (to serve it) instead of overwriting it.
        """

    async def load_thresholds(self) -> ThresholdTable | None:
        """The persisted table, if any."""

    async def shared_secret(self, name: str, candidate: str) -> str:
        """The secret stored under `name`, storing `candidate` first if there is none (SET NX).

        Every replica offers its own candidate; all of them get the first one stored.
        """

    async def mark_written(self, writer: str, mark: float) -> None:
        """Say that `writer` has written the records of every answer it sent before `mark`."""

    async def written_marks(self) -> dict[str, float]:
        """Every writer's last mark."""

    async def forget_writers(self, writers: Sequence[str]) -> None:
        """Remove these writers' marks (they stopped)."""

    async def ping(self) -> bool:
        """Whether the backend answers."""

    async def close(self) -> None:
        """Release connections."""


def record_key(request_id: str) -> str:
    """The fixed-size internal key a record is stored under, whatever the id's length."""
    return hashlib.blake2b(request_id.encode(), digest_size=16).hexdigest()


def key_text(key: ModelKey) -> str:
    """A model key as one string ("region|model|version"); names never hold "|"."""
    return "|".join(key)


def key_of_text(text: str) -> ModelKey:
    """Read back `key_text`."""
    region, model, version = text.split("|", 2)
    return (region, model, version)


def table_to_json(table: ThresholdTable) -> str:
    """A threshold table as JSON text."""
    rules = [
        [region, model, version, group, rule.low, rule.high, rule.p_high]
        for (region, model, version, group), rule in sorted(table.rules.items())
    ]
    return json.dumps({"version": table.version, "rules": rules}, separators=(",", ":"))


def table_from_json(text: str | bytes) -> ThresholdTable:
    """Read back `table_to_json` (StateError when it is not one)."""
    try:
        doc: dict[str, Any] = json.loads(text)
        rules = {
            (str(region), str(model), str(version), str(group)): ThresholdRule(
                float(low), None if high is None else float(high), float(p)
            )
            for region, model, version, group, low, high, p in doc["rules"]
        }
        return ThresholdTable(str(doc["version"]), MappingProxyType(rules))
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(f"stored thresholds are unreadable: {exc}") from exc
