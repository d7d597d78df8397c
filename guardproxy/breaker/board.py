"""BreakerBoard: one circuit breaker per (region, model), and a 1 s ticker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from guardproxy.breaker.state import CircuitBreaker, Clock, Listener, OperatorState, Transition
from guardproxy.policy.models import BreakerSpec
from guardproxy.policy.table import CompiledModel, PolicyTable
from guardproxy.policy.thresholds import Snapshot
from guardproxy.tasks import cancel_and_wait

log = logging.getLogger("guardproxy.breaker")

Ticker = Callable[[], None]
Key = tuple[str, str]  # (region, model)
OPERATOR_STATES = ("forced_open", "closed", "disabled")


class BreakerTelemetry(Protocol):
    """What the board tells telemetry: transitions, and the state of new breakers."""

    def breaker_transition(self, transition: Transition) -> None:
        """One state change."""

    def breaker_state(self, region: str, model: str, state: str) -> None:
        """The state of a breaker that has not changed state yet."""


def describe(transition: Transition) -> str:
    """One log line: region and model, old -> new, the reason and the last window's numbers."""
    numbers = ", ".join(f"{k}={v:.4g}" for k, v in sorted(transition.values.items())) or "none"
    return (
        f"breaker {transition.region}/{transition.model}: {transition.old} -> {transition.new} "
        f"({transition.reason}); last window: {numbers}"
    )


class BreakerBoard:
    """Every model's breaker, matched to the policy table (state kept when the spec is the same)."""

    def __init__(
        self,
        policies: Snapshot[PolicyTable],
        listeners: Iterable[Listener] = (),
        telemetry: BreakerTelemetry | None = None,
        clock: Clock = time.monotonic,
        interval: float = 1.0,
    ) -> None:
        self.policies, self.telemetry = policies, telemetry
        self.clock, self.interval = clock, interval
        self.listeners: list[Listener] = [self._log, self._count, *listeners]
        if telemetry is not None:
            self.listeners.append(telemetry.breaker_transition)
        self.transitions: dict[str, int] = {}
        self.rejected = 0
        self.tickers: list[Ticker] = []
        self.ticker_errors = 0
        self.table_listeners: list[Callable[[PolicyTable], None]] = []
        self.breakers: dict[Key, CircuitBreaker] = {}
        # Operator states by region, or by "region/model": a breaker rebuilt on a policy swap
        # is born in its model's state, else its region's (a forced model used to reopen).
        self.forced: dict[str, tuple[OperatorState, str]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._table: PolicyTable | None = None
        self._spare = CircuitBreaker(BreakerSpec(), clock, region="-", model="-")
        self.refresh()

    def get(self, model: CompiledModel) -> CircuitBreaker:
        """A model's breaker (hot path: one identity check, one dict lookup)."""
        if self.policies.current is not self._table:
            self.refresh()
        return self.breakers.get((model.region, model.name)) or self._spare

    def breaker(self, region: str, model: str) -> CircuitBreaker | None:
        """A model's breaker by names."""
        return self.breakers.get((region, model))

    def refresh(self) -> None:
        """Match the breakers to the current table; the same spec keeps a breaker's state."""
        table = self.policies.current
        old, self.breakers = self.breakers, {}
        for entry in table.regions.values():
            for model in entry.models:
                kept = old.get(model.key)
                if kept is None or kept.spec != model.spec.breaker:
                    kept = self._new(model)
                self.breakers[model.key] = kept
        self._table = table
        for listener in self.table_listeners:
            listener(table)

    def _new(self, model: CompiledModel) -> CircuitBreaker:
        breaker = CircuitBreaker(
            model.spec.breaker, self.clock, self.listeners, model.region, model=model.name
        )
        forced = self.forced.get(f"{model.region}/{model.name}") or self.forced.get(model.region)
        if forced is not None:
            breaker.force(*forced)
        elif self.telemetry is not None:
            self.telemetry.breaker_state(model.region, model.name, breaker.state_name)
        return breaker

    def force(
        self, region: str, state: str, reason: str, model: str | None = None
    ) -> dict[str, Any]:
        """Operator override of a region's breakers, or of one model's.

        KeyError: unknown region or model; ValueError: a state that cannot be forced.
        """
        if self.policies.current is not self._table:
            self.refresh()
        if state not in OPERATOR_STATES:
            raise ValueError(f"state must be forced_open, closed or disabled, not {state!r}")
        chosen = [b for (r, m), b in self.breakers.items() if r == region and model in (None, m)]
        if region not in self.policies.current.regions:
            raise KeyError(f"no region {region!r}")
        if model is not None and not chosen:
            raise KeyError(f"region {region!r} has no model {model!r}")
        operator_state: OperatorState = state  # type: ignore[assignment]
        key = region if model is None else f"{region}/{model}"
        if model is None:  # a region's state replaces its models' own
            for name in [k for k in self.forced if k.startswith(f"{region}/")]:
                del self.forced[name]
        self.forced.pop(key, None)
        if state != "closed":
            self.forced[key] = (operator_state, reason or "no reason given")
        for breaker in chosen:
            breaker.force(operator_state, reason or "no reason given")
        return {f"{b.region}/{b.model}": b.status() for b in chosen}

    def tick(self) -> None:
        """Once a second: follow policy swaps, close upstream windows, run the other tickers."""
        if self.policies.current is not self._table:
            self.refresh()
        for breaker in list(self.breakers.values()):
            breaker.tick()
        for ticker in self.tickers:
            try:
                ticker()
            except Exception:
                self.ticker_errors += 1
                log.exception("breaker ticker %r failed", ticker)

    async def start(self) -> None:
        """Start the ticker."""
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._run(), name="guardproxy-breakers")

    async def stop(self) -> None:
        """Stop the ticker."""
        task, self._ticker = self._ticker, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.tick()

    def _log(self, transition: Transition) -> None:
        level = logging.INFO if transition.new == "closed" else logging.WARNING
        log.log(level, describe(transition))

    def _count(self, transition: Transition) -> None:
        key = f"{transition.region}/{transition.model}:{transition.new}"
        self.transitions[key] = self.transitions.get(key, 0) + 1

    def status(self) -> dict[str, Any]:
        """Every model's breaker; transition counts, rejections, operator states."""
        return {
            "models": {f"{r}/{m}": b.status() for (r, m), b in sorted(self.breakers.items())},
            "forced": {r: {"state": s, "reason": why} for r, (s, why) in self.forced.items()},
            "transitions": dict(sorted(self.transitions.items())),
            "rejected": self.rejected,
            "ticker_errors": self.ticker_errors,
        }
