"""Counters and Histograms: bounded series, bucket edges, and the OpenTelemetry-shaped calls."""

from __future__ import annotations

import pytest

from guardproxy.telemetry.aggregate import Counters, Histograms


def test_attribute_sets_are_bounded() -> None:
    counts = Counters(("region",), limit=3)
    for region in ("a", "a", "b", "c", "d", "e"):
        counts.add_key((region,))
    assert sorted((a["region"], n) for a, n in counts.items()) == [
        ("a", 2), ("b", 1), ("c", 1), ("other", 2)
    ]  # fmt: skip
    durations = Histograms(("region",), (1.0,), limit=1)
    durations.record_key(("a",), 0.5)
    durations.record_key(("b",), 2.0)
    assert [p.attributes for p in durations.points()] == [{"region": "a"}, {"region": "other"}]
    with pytest.raises(ValueError, match="expected values for"):
        counts.add_key(("a", "b"))


def test_histogram_buckets_hold_their_upper_bound() -> None:
    durations = Histograms(("method", "route"), (0.1, 1, 10))
    for value in (0.05, 0.1, 0.1000001, 1, 10, 11):
        durations.record_key(("GET", ""), value)
    (point,) = durations.points()
    assert point.buckets == (2, 2, 1, 1) and point.count == 6
    assert point.min == 0.05 and point.max == 11 and point.sum == pytest.approx(22.2500001)
    assert point.attributes == {"method": "GET"}  # an empty slot is no attribute
    with pytest.raises(ValueError, match="strictly increasing"):
        Histograms(("method",), (1.0, 0.5))


def test_the_opentelemetry_calls_land_in_the_same_series() -> None:
    durations = Histograms(("method", "route"), (1.0,))
    durations.record(0.5, {"method": "GET"})
    durations.record_key(("GET", ""), 2.0)
    (point,) = durations.points()
    assert point.buckets == (1, 1) and point.attributes == {"method": "GET"}
    counts = Counters(("region", "cell"))
    counts.add(2, {"region": "sg", "cell": "tp"})
    counts.add_key(("sg", "tp"))
    assert counts.items() == [({"region": "sg", "cell": "tp"}, 3)]
    with pytest.raises(ValueError, match="unknown attributes"):
        counts.add(1, {"region": "sg", "request_id": "r-1"})
