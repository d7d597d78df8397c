"""ModelHealth: how each model's guarded answers ended, over the last few minutes."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from guardproxy.hotpath.observation import OUTCOMES, Observation
from guardproxy.policy.table import CompiledModel

Key = tuple[str, str]  # (region, model)
BUCKET = 10.0  # seconds per bucket
BUCKETS = 30  # the recent window: 5 minutes


class Outcomes:
    """Outcome counts of one model: since start, and per bucket of the recent window."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.total = dict.fromkeys(OUTCOMES, 0)
        self.buckets: deque[tuple[int, dict[str, int]]] = deque(maxlen=BUCKETS)

    def add(self, bucket: int, outcome: str, n: int = 1) -> None:
        """Count `n` answers (a batch answer counts once, whatever its rows)."""
        self.total[outcome] = self.total.get(outcome, 0) + n
        if not self.buckets or self.buckets[-1][0] != bucket:
            self.buckets.append((bucket, dict.fromkeys(OUTCOMES, 0)))
        counts = self.buckets[-1][1]
        counts[outcome] = counts.get(outcome, 0) + n

    def recent(self, now_bucket: int) -> dict[str, int]:
        """Counts of the buckets still inside the recent window."""
        out = dict.fromkeys(OUTCOMES, 0)
        for bucket, counts in self.buckets:
            if now_bucket - bucket < BUCKETS:
                for outcome, n in counts.items():
                    out[outcome] = out.get(outcome, 0) + n
        return out


class ModelHealth:
    """Monitor consumer: per model, how many answers were decided, unscored, blocked, failed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.models: dict[Key, Outcomes] = {}
        self.versions: dict[Key, str] = {}  # the version that answered last

    def consume(self, batch: list[Observation]) -> None:
        """Count each observation's outcome under its model."""
        # Counted for the whole batch first: a batch is mostly one model's, mostly decided.
        counted: dict[Key, dict[str, int]] = {}
        model: CompiledModel | None = None
        for ob in batch:
            if ob.first_row:
                continue  # a later piece (continued): counted with the request's first piece
            if ob.model is not model:
                model = ob.model
                key = (model.region, model.name)
                counts = counted.setdefault(key, {})
            outcome = ob.outcome
            counts[outcome] = counts.get(outcome, 0) + 1
            if ob.status < 500 and not ob.fallback:
                self.versions[key] = ob.version
        bucket = self._bucket()
        for key, counts in counted.items():
            outcomes = self.models.get(key)
            if outcomes is None:
                outcomes = self.models[key] = Outcomes()
            for outcome, n in counts.items():
                outcomes.add(bucket, outcome, n)

    def _bucket(self) -> int:
        return int(self.clock() // BUCKET)

    def recent(self, key: Key) -> dict[str, Any]:
        """A model's outcome counts and rates over the recent window, and since start."""
        outcomes = self.models.get(key)
        if outcomes is None:
            return {"window_seconds": BUCKET * BUCKETS, "recent": {}, "total": {}, "rates": {}}
        recent = outcomes.recent(self._bucket())
        answered = sum(recent.values())
        rates = {k: (v / answered if answered else 0.0) for k, v in recent.items()}
        return {
            "window_seconds": BUCKET * BUCKETS,
            "recent": recent,
            "total": dict(outcomes.total),
            "rates": rates,
        }
