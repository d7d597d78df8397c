"""What the fairness and health gauges show, read on the event loop and handed over whole.

The sources (the fairness reports, the fleet view) walk state the loop mutates without locks,
so only the loop reads them; a collection, in whatever thread it runs (the /metrics render,
the OTLP exporter), sees one immutable `Readings`. The loop reads them one model at a time
and yields every few ms: at 300 models a full read takes ~13 ms.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, TypeVar

log = logging.getLogger("guardproxy.telemetry")
T = TypeVar("T")
FairnessKey = tuple[str, str, str]  # region, model, version
FairnessValues = Mapping[str, Any]
# Fairness values per model version as FairnessEngine.each_gauge() yields them (or a mapping):
# (region, model, version) -> {"groups": {group: {"selection_rate": x, ...}},
#                              "disparities": {"demographic_...": y}}
FairnessSource = Callable[
    [], Mapping[FairnessKey, FairnessValues] | Iterable[tuple[FairnessKey, FairnessValues]]
]
# The fleet view's rows: each with region, model, score and problems.
FleetSource = Callable[[], Iterable[Any]]
BUDGET = 0.002  # seconds of reading before the loop is given back to other work


@dataclass(frozen=True, slots=True)
class Readings:
    """The gauge sources' answers at one moment; never mutated once built."""

    fairness: Mapping[FairnessKey, FairnessValues] = field(default_factory=dict)
    fleet: Sequence[Any] = ()


def _pairs(
    source: FairnessSource,
) -> Iterable[tuple[FairnessKey, FairnessValues]]:
    found = source()
    return found.items() if isinstance(found, Mapping) else found


def read_now(fairness: FairnessSource, fleet: FleetSource) -> Readings:
    """Read both sources in one go (tests, and callers that are not on a loop)."""
    return Readings(
        dict(_guarded("fairness", lambda: list(_pairs(fairness)))),
        tuple(_guarded("fleet", lambda: list(fleet()))),
    )


async def read_sliced(
    fairness: FairnessSource, fleet: FleetSource, budget: float = BUDGET
) -> Readings:
    """Read both sources on the loop, yielding it whenever `budget` seconds have gone by."""
    pairs = await _sliced("fairness", lambda: _pairs(fairness), budget)
    rows = await _sliced("fleet", fleet, budget)
    return Readings(dict(pairs), tuple(rows))


def _guarded(name: str, read: Callable[[], list[T]]) -> list[T]:
    try:
        return read()
    except Exception:
        # As a failing gauge callback did: logged, its series left out of this collection.
        log.exception("the %s gauges' source failed", name)
        return []


async def _sliced(name: str, items: Callable[[], Iterable[T]], budget: float) -> list[T]:
    out: list[T] = []
    try:
        start = perf_counter()
        for item in items():
            out.append(item)
            if perf_counter() - start > budget:
                await asyncio.sleep(0)
                start = perf_counter()
    except Exception:
        log.exception("the %s gauges' source failed", name)
        return []
    return out
