"""Hot-path aggregation in plain Python: counts and fixed-bucket histograms per attribute tuple.

The OpenTelemetry SDK validates and hashes attributes on every `add` / `record` (tens of
microseconds); here a request costs a dict lookup and a bisect, and the SDK only reads the
totals when a scrape or an export collects them.

>>> durations = Histograms(("method",), (0.1, 1.0))
>>> durations.record_key(("GET",), 0.05); durations.record_key(("GET",), 0.5)
>>> durations.points()[0].buckets
(1, 1, 0)
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass

Key = tuple[str | int, ...]
Attributes = dict[str, str | int]
MAX_SERIES = 4096
ABSENT = ""  # a key slot holding this is left out of the attributes (e.g. no http.route)


def key_of(names: tuple[str, ...], attributes: Mapping[str, str | int]) -> Key:
    """The key of an attribute mapping (absent names get the ABSENT slot; others are refused)."""
    unknown = set(attributes) - set(names)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; expected some of {names}")
    return tuple(attributes.get(name, ABSENT) for name in names)


def attributes_of(names: tuple[str, ...], key: Key) -> Attributes:
    """The attribute dict of a key, without its absent slots."""
    return {name: value for name, value in zip(names, key, strict=True) if value != ABSENT}


class Counters:
    """Monotonic counts per attribute tuple (bounded: beyond the cap, values become 'other')."""

    __slots__ = ("limit", "names", "overflow", "values")

    def __init__(self, names: tuple[str, ...], limit: int = MAX_SERIES) -> None:
        self.names = names
        self.limit = limit
        self.overflow: Key = ("other",) * len(names)
        self.values: dict[Key, int] = {}

    def add_key(self, key: Key, amount: int = 1) -> None:
        """Count `amount` more for this key (the hot path: values in the order of `names`)."""
        count = self.values.get(key)
        if count is None:
            self._first(key, amount)
        else:
            self.values[key] = count + amount

    def _first(self, key: Key, amount: int) -> None:
        if len(key) != len(self.names):
            raise ValueError(f"expected values for {self.names}, got {key!r}")
        if len(self.values) >= self.limit:
            key = self.overflow
        self.values[key] = self.values.get(key, 0) + amount

    def add(self, amount: int, attributes: Mapping[str, str | int]) -> None:
        """The OpenTelemetry counter's call, for code that is not on the hot path."""
        self.add_key(key_of(self.names, attributes), amount)

    def items(self) -> list[tuple[Attributes, int]]:
        """Every count with its attributes (a copy: safe to call from the exporter's thread)."""
        return [(attributes_of(self.names, key), n) for key, n in list(self.values.items())]


class Series:
    """One attribute tuple's histogram: bucket counts, sum, min and max."""

    __slots__ = ("buckets", "max", "min", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf


@dataclass(frozen=True, slots=True)
class Point:
    """A consistent copy of one series: count is the sum of the buckets it was taken with."""

    attributes: Attributes
    buckets: tuple[int, ...]
    sum: float
    min: float
    max: float

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return sum(self.buckets)


class Histograms:
    """Explicit-bucket histograms per attribute tuple; bucket i holds (bounds[i-1], bounds[i]]."""

    __slots__ = ("bounds", "limit", "names", "overflow", "series")

    def __init__(
        self, names: tuple[str, ...], bounds: tuple[float, ...], limit: int = MAX_SERIES
    ) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"bucket bounds must be strictly increasing: {bounds}")
        self.names, self.bounds, self.limit = names, bounds, limit
        self.overflow: Key = ("other",) * len(names)
        self.series: dict[Key, Series] = {}

    def record_key(self, key: Key, value: float) -> None:
        """Count one value for this key (the hot path: values in the order of `names`)."""
        series = self.series.get(key)
        if series is None:
            series = self._first(key)
        series.buckets[bisect_left(self.bounds, value)] += 1
        series.sum += value
        if value < series.min:
            series.min = value
        if value > series.max:
            series.max = value

    def record(self, value: float, attributes: Mapping[str, str | int]) -> None:
        """The OpenTelemetry histogram's call, for code that is not on the hot path."""
        self.record_key(key_of(self.names, attributes), value)

    def _first(self, key: Key) -> Series:
        if len(key) != len(self.names):
            raise ValueError(f"expected values for {self.names}, got {key!r}")
        if len(self.series) >= self.limit:
            key = self.overflow
        return self.series.setdefault(key, Series(len(self.bounds) + 1))

    def points(self) -> list[Point]:
        """A copy of every series (safe to call from the exporter's thread)."""
        return [
            Point(attributes_of(self.names, key), tuple(s.buckets), s.sum, s.min, s.max)
            for key, s in list(self.series.items())
        ]
