"""What the hot path hands the off path: an immutable record of one guarded exchange.

Never the live exchange: no headers, no bodies, nothing a worker could change or keep
alive. The drift features the model's policy watches are read once, on the hot path, from
the request the guards already parsed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping, Sequence
from typing import NamedTuple

from guardproxy.breaker.state import Admission
from guardproxy.guards.exchange import Exchange, Verdict
from guardproxy.guards.features import Features
from guardproxy.hotpath.admission import Admitted
from guardproxy.policy.table import CompiledModel

BASE_SIZE = 400  # bytes an observation holds besides its rows, roughly
ROW_SIZE = 120  # bytes per scored row (verdict and its features), roughly

log = logging.getLogger("guardproxy.proxy")
OUTCOMES = ("decided", "unscored", "blocked", "error", "passed")
THRESHOLD_VERSION = "X-Guard-Threshold-Version"


class Observation(NamedTuple):
    """One finished guarded exchange, as the monitors and telemetry see it.

    A tuple: immutable, and built in one step on the hot path (a frozen dataclass sets each of
    its fields through object.__setattr__, which showed in profiles).
    """

    request_id: str
    model: CompiledModel
    version: str
    method: str
    path: str
    status: int
    outcome: str  # one of OUTCOMES
    verdicts: tuple[Verdict, ...]
    features: Features
    flags: tuple[str, ...]
    errors: int
    sampled: bool
    breaker: str  # the breaker's state when it was not closed, else ""
    fallback: bool  # answered by the fallback upstream: not the model's own answer
    probe: bool  # a half-open probe of the model
    threshold_version: str
    upstream_seconds: float
    first_row: int = 0  # a piece of a large request's rows (MonitorWorker): its first row
    request_rows: int = 0  # the rows of the whole request, which its pieces share

    @property
    def continued(self) -> bool:
        """A later piece of a request already counted by its first piece."""
        return self.first_row > 0

    def spread(self, limit: int) -> Observation | None:
        """This piece's share of at most `limit` rows, evenly spaced over the whole request."""
        total = self.request_rows or len(self.verdicts)
        if total <= limit:
            return self
        stride = -(-total // limit)
        start = -self.first_row % stride
        verdicts = self.verdicts[start::stride]
        if not verdicts:
            return None
        features = tuple(f[start::stride] for f in self.features)
        return self._replace(verdicts=verdicts, features=features)

    def split(self, rows: int) -> tuple[Observation, Observation]:
        """The first `rows` rows and the rest, as two pieces of the same exchange."""
        head = self._replace(
            verdicts=self.verdicts[:rows], features=tuple(f[:rows] for f in self.features)
        )
        rest = self._replace(
            verdicts=self.verdicts[rows:],
            features=tuple(f[rows:] for f in self.features),
            first_row=self.first_row + rows,
        )
        return head, rest

    @property
    def size(self) -> int:
        """Roughly how many bytes it keeps alive while it waits in the queue (`size_of`)."""
        return size_of(self)

    @property
    def region(self) -> str:
        """The region whose policy applied."""
        return self.model.region


def size_of(observation: Observation) -> int:
    """An observation's `size`, as a function: the monitor worker calls it for every
    observation, and a property is a slower call."""
    return BASE_SIZE + ROW_SIZE * len(observation.verdicts) * (1 + len(observation.features))


def row_count(observations: Sequence[Observation]) -> int:
    """The rows (verdicts) of some observations, counted in a loop: a generator given to
    sum() costs more than a batch's few observations."""
    rows = 0
    for observation in observations:
        rows += len(observation.verdicts)
    return rows


def observe(ex: Exchange, model: CompiledModel, admitted: Admitted) -> Observation:
    """The immutable record of a finished exchange."""
    verdicts = tuple(ex.verdicts)
    reader = getattr(model.chain, "features", None)
    features = reader(ex, len(verdicts)) if reader is not None and verdicts else ()
    reply = ex.reply
    # Positional: a NamedTuple matches keywords to fields in Python, once per request.
    return Observation(
        ex.request_id,
        model,
        ex.version,
        ex.method,
        ex.path,
        reply.status if reply is not None else ex.status,
        outcome_of(ex),
        verdicts,
        features,
        tuple(ex.flags),
        len(ex.errors),
        ex.sampled,
        admitted.state,
        admitted.fallback,
        admitted.admission is Admission.PROBE,
        ex.annotations.get(THRESHOLD_VERSION, "static"),
        ex.upstream_seconds,
        0,
        len(verdicts),
    )


def outcome_of(ex: Exchange) -> str:
    """How the exchange ended, as counted per model."""
    if ex.reply is not None:
        return "blocked"
    if ex.status >= 500 or ex.status == 0:
        return "error"
    if ex.verdicts:
        return "decided"
    return "unscored" if ex.unscored else "passed"


def hand_over(
    observation: Observation,
    observers: Sequence[Callable[[Observation], None]],
    errors: MutableMapping[str, int],
) -> None:
    """Give every observer the same record; one that fails is counted and logged, never fatal."""
    for observer in observers:
        try:
            observer(observation)
        except Exception:
            name = getattr(observer, "__qualname__", type(observer).__name__)
            errors[name] = errors.get(name, 0) + 1
            log.exception("observer %s failed on %s", name, observation.request_id)
