"""Learned thresholds: immutable tables the off path publishes and the hot path reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

T = TypeVar("T")
ModelKey = tuple[str, str, str]  # (region, model, model version): what monitors keep apart
RuleKey = tuple[str, str, str, str]  # (region, model, model version, group)


class Snapshot(Generic[T]):
    """Holds the current value; writers swap it whole, readers never lock."""

    __slots__ = ("current",)

    def __init__(self, value: T) -> None:
        self.current = value

    def publish(self, value: T) -> None:
        """Replace the value in one reference assignment."""
        self.current = value


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """A group's decision rule: `low` with probability 1 - p_high, else `high`."""

    low: float
    high: float | None = None
    p_high: float = 0.0

    @property
    def randomized(self) -> bool:
        """Whether the rule mixes two thresholds (and so needs a draw)."""
        return self.high is not None and self.p_high > 0.0

    def threshold_for(self, uniform: float) -> float:
        """The threshold for a draw in [0, 1): `high` when it falls below p_high."""
        if self.high is None or self.p_high <= 0.0:
            return self.low
        return self.high if uniform < self.p_high else self.low

    @property
    def label(self) -> str:
        """The rule as clients see it: "0.5", or "low|high@p_high" for a mix (never the draw)."""
        if not self.randomized:
            return f"{self.low:.4g}"
        return f"{self.low:.4g}|{self.high:.4g}@{self.p_high:.4g}"


@dataclass(frozen=True, slots=True)
class ThresholdTable:
    """Learned thresholds per (region, model, version, group), with a version for history."""

    version: str = "static"
    rules: Mapping[RuleKey, ThresholdRule] = field(default_factory=lambda: MappingProxyType({}))

    def rule(self, key: ModelKey, group: str) -> ThresholdRule | None:
        """The learned rule of a model version's group, if any."""
        return self.rules.get((*key, group))
