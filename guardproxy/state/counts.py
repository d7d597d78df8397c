"""Per-group integer counters: what the state backends store and the monitors read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields


@dataclass(slots=True)
class GroupCounts:
    """Integer counters of one (region, group): mergeable across replicas by addition.

    `decisions` and `selected` count every decision; tp, fp, tn, fn count the decisions
    whose label arrived, judged at the threshold in force when the decision was made.
    """

    decisions: int = 0
    selected: int = 0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def record(self, predicted: bool, label: bool | None = None) -> None:
        """Count one decision, and its confusion cell when the label is known."""
        self.decisions += 1
        self.selected += int(predicted)
        if label is not None:
            name = cell(predicted, label)
            setattr(self, name, getattr(self, name) + 1)

    def labeled(self) -> int:
        """How many of the counted decisions carry a label."""
        return self.tp + self.fp + self.tn + self.fn

    def minus(self, other: GroupCounts) -> GroupCounts:
        """The counts added since `other` was taken."""
        return GroupCounts(**{k: v - other.to_dict()[k] for k, v in self.to_dict().items()})

    def merge(self, other: GroupCounts) -> GroupCounts:
        """The sum of two counters."""
        return GroupCounts(**{k: v + other.to_dict()[k] for k, v in self.to_dict().items()})

    def to_dict(self) -> dict[str, int]:
        """A flat mapping of counters, ready for HINCRBY into a Redis hash."""
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, mapping: Mapping[str, int | str]) -> GroupCounts:
        """Read back `to_dict` (values may be strings, as Redis answers); other keys ignored."""
        return cls(**{f.name: int(mapping.get(f.name, 0)) for f in fields(cls)})


def cell(decision: bool | int, label: bool | int) -> str:
    """The confusion cell of a decision against its label: tp, fp, tn or fn."""
    if decision:
        return "tp" if label else "fp"
    return "fn" if label else "tn"
