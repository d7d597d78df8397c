"""The circuit breaker: closed, open, half-open (and operator states), monotonic clock injected.

Single-threaded by design (one asyncio loop): no locks, state changes are synchronous.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from types import MappingProxyType
from typing import Any, Literal

from guardproxy.breaker.window import UpstreamWindow
from guardproxy.policy.models import BreakerSpec, TripRule

Clock = Callable[[], float]
OperatorState = Literal["forced_open", "closed", "disabled"]


class Admission(Enum):
    """What the hot path does with one request."""

    PASS = "pass"  # closed or disabled: forward normally
    OPEN = "open"  # apply the open action (breaker.open_action)
    PROBE = "probe"  # half-open probe slot taken: forward, then call probe_done(ok)


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, as listeners receive it."""

    region: str
    model: str
    old: str
    new: str
    reason: str
    values: Mapping[str, float]
    at: float  # wall clock, seconds since the epoch


Listener = Callable[[Transition], None]


def rule_label(rule: TripRule) -> str:
    """A short readable name for a trip rule, e.g. 'drift.score.psi>0.25x3'."""
    op, bound = (">", rule.above) if rule.above is not None else ("<", rule.below)
    return f"{rule.when}{op}{bound}x{rule.windows}"


def crosses(rule: TripRule, value: float) -> bool:
    """Whether a window value crosses the rule's bound."""
    if rule.above is not None:
        return value > rule.above
    return rule.below is not None and value < rule.below


class State:
    """Behaviour of one breaker state; the breaker delegates to it."""

    name = "state"

    def enter(self, breaker: CircuitBreaker) -> None:
        """Called once when the breaker moves into this state."""

    def admit(self, breaker: CircuitBreaker) -> Admission:
        """Admission of one request."""
        raise NotImplementedError

    def on_window(self, breaker: CircuitBreaker, crossed: list[str], tripped: list[str]) -> None:
        """React to a completed monitor window."""

    def probe_done(self, breaker: CircuitBreaker, ok: bool) -> None:
        """React to the outcome of a probe request."""

    def expire(self, breaker: CircuitBreaker) -> None:
        """React to the state having lasted as long as it may (half-open only)."""


class Closed(State):
    """Normal operation: trips when a rule has crossed for its N consecutive windows."""

    name = "closed"

    def enter(self, breaker: CircuitBreaker) -> None:
        breaker.reset_streaks()
        breaker.tripped_by = set()

    def admit(self, breaker: CircuitBreaker) -> Admission:
        return Admission.PASS

    def on_window(self, breaker: CircuitBreaker, crossed: list[str], tripped: list[str]) -> None:
        if tripped:
            breaker.transition(OPEN, "tripped: " + ", ".join(tripped))


class Open(State):
    """Rejecting (or falling back, or flagging) until the cooldown has passed."""

    name = "open"

    def enter(self, breaker: CircuitBreaker) -> None:
        breaker.opened_at = breaker.clock()

    def admit(self, breaker: CircuitBreaker) -> Admission:
        if breaker.cooldown_over():
            breaker.transition(HALF_OPEN, "cooldown elapsed")
            return breaker.state.admit(breaker)
        return Admission.OPEN


class HalfOpen(State):
    """A capped number of probes; healthy windows close, a failure re-opens."""

    name = "half_open"

    def enter(self, breaker: CircuitBreaker) -> None:
        breaker.probes_admitted = breaker.probes_ok = breaker.healthy_windows = 0
        breaker.epoch += 1
        breaker.half_open_at = breaker.clock()
        # A drift trip must be disproved by the probes' own window before the breaker closes.
        breaker.pending = {w for w in breaker.tripped_by if w.startswith("drift.")}

    def admit(self, breaker: CircuitBreaker) -> Admission:
        if breaker.probes_admitted < breaker.probe_cap:
            breaker.probes_admitted += 1
            return Admission.PROBE
        return Admission.OPEN

    def on_window(self, breaker: CircuitBreaker, crossed: list[str], tripped: list[str]) -> None:
        if crossed:
            breaker.transition(OPEN, "unhealthy window in half-open: " + ", ".join(crossed))
            return
        breaker.pending -= breaker.window_values.keys()
        if breaker.probes_ok == 0:
            return
        breaker.healthy_windows += 1
        if breaker.pending:
            return
        if breaker.healthy_windows >= breaker.spec.half_open.close_after_windows:
            breaker.transition(CLOSED, f"{breaker.healthy_windows} healthy windows with probes")

    def probe_done(self, breaker: CircuitBreaker, ok: bool) -> None:
        if ok:
            breaker.probes_ok += 1
        else:
            breaker.transition(OPEN, "probe failed")

    def expire(self, breaker: CircuitBreaker) -> None:
        # No probe failed (that re-opens at once): close if any succeeded and no drift trip
        # still waits for the probes' own window, else cool down again.
        seconds = f"{breaker.spec.half_open.max_seconds:g}s"
        if breaker.pending:
            waiting = ", ".join(sorted(breaker.pending))
            breaker.transition(OPEN, f"half-open for {seconds}: {waiting} not shown healthy")
        elif breaker.probes_ok:
            reason = f"half-open for {seconds}: {breaker.probes_ok} probes ok, none failed"
            breaker.transition(CLOSED, reason)
        else:
            breaker.transition(OPEN, f"half-open for {seconds} without a successful probe")


class ForcedOpen(State):
    """Operator: open until told otherwise, whatever the monitors say."""

    name = "forced_open"

    def admit(self, breaker: CircuitBreaker) -> Admission:
        return Admission.OPEN


class Disabled(State):
    """Operator: never trips, every request passes."""

    name = "disabled"

    def admit(self, breaker: CircuitBreaker) -> Admission:
        return Admission.PASS


CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED = (
    Closed(),
    Open(),
    HalfOpen(),
    ForcedOpen(),
    Disabled(),
)
_OPERATOR: dict[str, State] = {"forced_open": FORCED_OPEN, "closed": CLOSED, "disabled": DISABLED}


class CircuitBreaker:
    """One model's breaker, fed with monitor windows and upstream outcomes."""

    def __init__(
        self,
        spec: BreakerSpec,
        clock: Clock = time.monotonic,
        listeners: Iterable[Listener] = (),
        region: str = "default",
        wall_clock: Clock = time.time,
        model: str = "*",
    ) -> None:
        self.spec, self.clock, self.region, self.wall_clock = spec, clock, region, wall_clock
        self.model = model
        self.listeners = list(listeners)
        self.open_action = spec.open.action
        self.probe_cap = spec.half_open.probes
        self.labels = [rule_label(r) for r in spec.trip]
        self.streaks = [0] * len(spec.trip)
        self.opened_at = self.since_wall = 0.0
        self.probes_admitted = self.probes_ok = self.healthy_windows = 0
        self.probes_released = 0
        self.epoch = 0  # one per half-open period: a late release never frees a newer slot
        self.half_open_at = 0.0
        self.listener_errors = 0
        self.reason = "start"
        self.tripped_by: set[str] = set()  # monitors whose rules tripped since last closed
        self.pending: set[str] = set()  # drift monitors half-open still waits to see healthy
        self.window_values: Mapping[str, float] = MappingProxyType({})
        self.last_values: Mapping[str, float] = MappingProxyType({})
        self.upstream = UpstreamWindow(spec.slow_call, clock(), spec.min_calls)
        self.state: State = CLOSED
        self.since_wall = wall_clock()

    @property
    def state_name(self) -> str:
        """The current state's name."""
        return self.state.name

    def admit(self) -> Admission:
        """Admission of one request (hot path: no allocation, no I/O)."""
        return self.state.admit(self)

    def probe_done(self, ok: bool, epoch: int | None = None) -> None:
        """Report the outcome of a request admitted as PROBE in half-open `epoch` (None: this one).

        A probe of an earlier half-open that answers late (a slow model, its read timeout
        longer than the cooldown) says nothing of this one's probes: it neither counts as
        their success, which closes the breaker, nor as their failure.
        """
        if epoch is None or epoch == self.epoch:
            self.state.probe_done(self, ok)

    def release_probe(self, epoch: int) -> None:
        """Give back a probe slot whose request ended before reaching the upstream.

        A 413, a refused encoding, a guard's block or a client that went away says nothing
        about the model; keeping the slot would leave half-open waiting for outcomes forever.
        """
        if self.state is HALF_OPEN and epoch == self.epoch and self.probes_admitted > 0:
            self.probes_admitted -= 1
            self.probes_released += 1

    def record_upstream(self, status: int | None, seconds: float) -> None:
        """Count one upstream call in the current health window (None: connect error/timeout)."""
        self.upstream.record(status, seconds)

    def tick(self) -> dict[str, float] | None:
        """Close the upstream window when due and feed it in; also ends a due cooldown."""
        now = self.clock()
        if self.state is OPEN and self.cooldown_over():
            self.transition(HALF_OPEN, "cooldown elapsed")
        elif self.state is HALF_OPEN and now - self.half_open_at >= self.spec.half_open.max_seconds:
            self.state.expire(self)
        if now - self.upstream.started < self.spec.window:
            return None
        values = self.upstream.values()
        self.upstream.reset(now)
        self.observe_window(values)
        return values

    def observe_window(self, values: Mapping[str, float]) -> None:
        """Feed one completed window of any monitor; absent monitors keep their streak."""
        self.last_values = MappingProxyType({**self.last_values, **values})
        self.window_values = values
        crossed: list[str] = []
        tripped: list[str] = []
        for i, rule in enumerate(self.spec.trip):
            if rule.when not in values:
                continue
            if crosses(rule, float(values[rule.when])):
                self.streaks[i] += 1
                crossed.append(f"{self.labels[i]} ({values[rule.when]:.4g})")
            else:
                self.streaks[i] = 0
            if self.streaks[i] >= rule.windows:
                tripped.append(crossed[-1])
                self.tripped_by.add(rule.when)
        self.state.on_window(self, crossed, tripped)

    def force(self, state: OperatorState, reason: str) -> None:
        """Operator override: forced_open, disabled, or back to automatic closed."""
        if state not in _OPERATOR:
            raise ValueError(f"cannot force state {state!r} (expected one of {sorted(_OPERATOR)})")
        self.transition(_OPERATOR[state], f"operator: {reason}")

    def cooldown_over(self) -> bool:
        """Whether the open state's cooldown has elapsed."""
        return self.clock() - self.opened_at >= self.spec.cooldown

    def reset_streaks(self) -> None:
        """Forget every rule's streak."""
        self.streaks = [0] * len(self.spec.trip)

    def transition(self, new: State, reason: str) -> None:
        """Move to a new state and tell the listeners."""
        old, self.state = self.state, new
        self.reason, self.since_wall = reason, self.wall_clock()
        new.enter(self)
        event = Transition(
            self.region, self.model, old.name, new.name, reason, self.last_values, self.since_wall
        )
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                # A broken log or metric hook must not wedge the breaker.
                self.listener_errors += 1

    def retry_after(self) -> int:
        """Seconds a rejected client should wait (the 503 Retry-After), at least 1."""
        if self.state is OPEN:
            return max(1, math.ceil(self.spec.cooldown - (self.clock() - self.opened_at)))
        if self.state is FORCED_OPEN:
            return max(1, math.ceil(self.spec.cooldown))
        return max(1, math.ceil(self.spec.window))

    def status(self) -> dict[str, Any]:
        """A JSON-able view for the admin status page."""
        return {
            "region": self.region,
            "model": self.model,
            "state": self.state.name,
            "since": datetime.fromtimestamp(self.since_wall, UTC).isoformat(),
            "reason": self.reason,
            "open_action": self.open_action,
            "last_window": dict(self.last_values),
            "streaks": dict(zip(self.labels, self.streaks, strict=True)),
            "probes_admitted": self.probes_admitted,
            "probes_ok": self.probes_ok,
            "probes_released": self.probes_released,
            "probe_cap": self.probe_cap,
            "waiting_for": sorted(self.pending),
        }
