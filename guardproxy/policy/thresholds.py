"""Learned thresholds: immutable tables the off path publishes and the hot path reads."""

from __future__ import annotations

import hashlib
import struct
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

    def threshold_for(self, request_id: str) -> float:
        """The threshold this request gets; a mix is seeded by the request id."""
        if self.high is None or self.p_high <= 0.0:
            return self.low
        return self.high if request_uniform(request_id) < self.p_high else self.low


@dataclass(frozen=True, slots=True)
class ThresholdTable:
    """Learned thresholds per (region, model, version, group), with a version for history."""

    version: str = "static"
    rules: Mapping[RuleKey, ThresholdRule] = field(default_factory=lambda: MappingProxyType({}))

    def rule(self, key: ModelKey, group: str) -> ThresholdRule | None:
        """The learned rule of a model version's group, if any."""
        return self.rules.get((*key, group))


def request_uniform(request_id: str, salt: bytes = b"") -> float:
    """A uniform number in [0, 1) derived from the request id: same id, same number."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8, key=salt).digest()
    value: int = struct.unpack(">Q", digest)[0]
    return value / 2.0**64
