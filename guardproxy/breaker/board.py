"""BreakerBoard: circuit breakers per region and guarded path, a 1 s ticker, the fallback pools."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Protocol

from guardproxy.breaker.state import (
    CircuitBreaker,
    Clock,
    Listener,
    OperatorState,
    Transition,
)
from guardproxy.policy.models import BreakerSpec
from guardproxy.policy.table import CompiledPolicy, PolicyTable
from guardproxy.policy.thresholds import Snapshot
from guardproxy.tasks import cancel_and_wait

log = logging.getLogger("guardproxy.breaker")

Ticker = Callable[[], None]
ROUTE_CAP = 64
SHARED = "*"  # the region-wide breaker, shared by paths beyond the cap
SEVERITY = {"closed": 0, "disabled": 1, "half_open": 2, "open": 3, "forced_open": 4}


class BreakerTelemetry(Protocol):
    """What the board tells telemetry: transitions, and the state of new breakers."""

    def breaker_transition(self, transition: Transition) -> None:
        """One state change."""

    def breaker_state(self, region: str, state: str) -> None:
        """The state of a breaker that has not changed state yet."""


def describe(transition: Transition, route: str = SHARED) -> str:
    """One log line: region (and route), old -> new, the reason and the last window's numbers."""
    numbers = ", ".join(f"{k}={v:.4g}" for k, v in sorted(transition.values.items())) or "none"
    name = transition.region if route == SHARED else f"{transition.region} {route}"
    return (
        f"breaker {name}: {transition.old} -> {transition.new} "
        f"({transition.reason}); last window: {numbers}"
    )


class RegionBreakers:
    """One region's breakers: one per guarded path up to a cap, then the shared region-wide one."""

    def __init__(
        self, policy: CompiledPolicy, make: Callable[[str], CircuitBreaker], cap: int
    ) -> None:
        self.policy, self.make, self.cap = policy, make, cap
        self.spec = policy.policy.breaker
        self.shared = make(SHARED)
        self.routes: dict[str, CircuitBreaker] = {}
        self.overflow = 0
        self.forced: tuple[OperatorState, str] | None = None

    def add(self, path: str) -> CircuitBreaker:
        """A new path's breaker (born forced if the region is); beyond the cap the shared one."""
        if len(self.routes) >= self.cap:
            self.overflow += 1
            return self.shared
        breaker = self.routes[path] = self.make(path)
        if self.forced is not None:
            breaker.force(*self.forced)
        return breaker

    def all(self) -> list[CircuitBreaker]:
        """Every breaker of the region, the shared one first."""
        return [self.shared, *self.routes.values()]

    def follow(self, policy: CompiledPolicy) -> None:
        """Adopt a policy with the same breaker spec; forget paths it no longer guards."""
        self.policy = policy
        self.routes = {p: b for p, b in self.routes.items() if policy.routes.matches(p)}

    def worst(self) -> CircuitBreaker:
        """The breaker in the most severe state (what the region's gauge shows)."""
        return max(self.all(), key=lambda b: SEVERITY.get(b.state_name, 0))

    def force(self, state: OperatorState, reason: str, route: str | None) -> dict[str, Any]:
        """Force every breaker (remembered for paths yet to come), or only one route's."""
        if route is not None:
            breaker = self._route(route)
            breaker.force(state, reason)
            return {**breaker.status(), "route": route}
        self.forced = None if state == "closed" else (state, reason)
        for breaker in self.all():
            breaker.force(state, reason)
        return self.status()

    def _route(self, route: str) -> CircuitBreaker:
        if route == SHARED:
            return self.shared
        if not self.policy.routes.matches(route):
            raise KeyError(f"region {self.policy.region!r} does not guard {route!r}")
        if route not in self.routes and len(self.routes) >= self.cap:
            raise ValueError(f"{route!r} shares the region-wide breaker (cap {self.cap} reached)")
        return self.routes.get(route) or self.add(route)

    def status(self) -> dict[str, Any]:
        """The most severe state and its reason, the overflow count, every breaker by route."""
        worst = self.worst()
        named = [(SHARED, self.shared), *sorted(self.routes.items())]
        return {
            "state": worst.state_name,
            "reason": worst.reason,
            "overflow": self.overflow,
            "cap": self.cap,
            "routes": {route: {**b.status(), "route": route} for route, b in named},
        }


class BreakerBoard:
    """Every region's breakers, rebuilt on a policy swap (state kept when the spec is the same)."""

    def __init__(
        self,
        policies: Snapshot[PolicyTable],
        listeners: Iterable[Listener] = (),
        telemetry: BreakerTelemetry | None = None,
        clock: Clock = time.monotonic,
        interval: float = 1.0,
        route_cap: int = ROUTE_CAP,
    ) -> None:
        self.policies = policies
        self.telemetry, self.clock, self.interval = telemetry, clock, interval
        self.route_cap = route_cap
        self.listeners: list[Listener] = [self._count, *listeners]
        if telemetry is not None:
            self.listeners += [telemetry.breaker_transition, self._gauge]
        self.transitions: dict[str, int] = {}
        self.rejected = 0
        self.tickers: list[Ticker] = []
        self.ticker_errors = 0
        self.regions: dict[str, RegionBreakers] = {}
        self.table_listeners: list[Callable[[PolicyTable], None]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._table: PolicyTable | None = None
        self._spare = CircuitBreaker(BreakerSpec(), clock, region="-")
        self.refresh()

    def get(self, policy: CompiledPolicy, path: str) -> CircuitBreaker:
        """The breaker of a region's guarded path (hot path: one identity check, two lookups)."""
        if self.policies.current is not self._table:
            self.refresh()
        region = self.regions.get(policy.region)
        if region is None:
            return self._spare
        return region.routes.get(path) or region.add(path)

    def breaker(self, region: str, route: str = SHARED) -> CircuitBreaker | None:
        """A region's breaker by exact names: the region-wide one, or a path's."""
        breakers = self.regions.get(region)
        if breakers is None:
            return None
        return breakers.shared if route == SHARED else breakers.routes.get(route)

    def breakers_of(self, region: str) -> list[CircuitBreaker]:
        """Every breaker of a region (where region-level signals go); empty when unknown."""
        breakers = self.regions.get(region)
        return breakers.all() if breakers is not None else []

    def refresh(self) -> None:
        """Match the breakers to the current policy table; same spec keeps the breakers' state."""
        table = self.policies.current
        old, self.regions = self.regions, {}
        for name, entry in table.regions.items():
            kept = old.get(name)
            if kept is not None and kept.spec == entry.policy.breaker:
                kept.follow(entry)
                self.regions[name] = kept
            else:
                make = partial(self._new, name, entry.policy.breaker)
                self.regions[name] = RegionBreakers(entry, make, self.route_cap)
        self._table = table
        for listener in self.table_listeners:
            listener(table)

    def _new(self, region: str, spec: BreakerSpec, route: str) -> CircuitBreaker:
        listeners: list[Listener] = [partial(self._log, route), *self.listeners]
        breaker = CircuitBreaker(spec, self.clock, listeners, region)
        if self.telemetry is not None and route == SHARED:
            self.telemetry.breaker_state(region, breaker.state_name)
        return breaker

    def force(
        self, region: str, state: str, reason: str, route: str | None = None
    ) -> dict[str, Any]:
        """Operator override of a region's breakers, or of one route's (`*`: the shared one).

        KeyError: unknown region or unguarded route; ValueError: bad state, or the cap reached.
        """
        if self.policies.current is not self._table:
            self.refresh()
        breakers = self.regions.get(region)
        if breakers is None:
            raise KeyError(f"no region {region!r}")
        if state not in ("forced_open", "closed", "disabled"):
            raise ValueError(f"state must be forced_open, closed or disabled, not {state!r}")
        operator_state: OperatorState = state  # type: ignore[assignment]
        return breakers.force(operator_state, reason or "no reason given", route)

    def tick(self) -> None:
        """Once a second: follow policy swaps, close upstream windows, run the other tickers."""
        if self.policies.current is not self._table:
            self.refresh()
        for region in self.regions.values():
            for breaker in region.all():
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

    def _log(self, route: str, transition: Transition) -> None:
        level = logging.INFO if transition.new == "closed" else logging.WARNING
        log.log(level, describe(transition, route))

    def _gauge(self, transition: Transition) -> None:
        # Telemetry keeps one state per region: show the most severe of its breakers.
        region = self.regions.get(transition.region)
        if region is not None and self.telemetry is not None:
            self.telemetry.breaker_state(transition.region, region.worst().state_name)

    def _count(self, transition: Transition) -> None:
        key = f"{transition.region}:{transition.new}"
        self.transitions[key] = self.transitions.get(key, 0) + 1

    def status(self) -> dict[str, Any]:
        """Per region its breakers by route; transition counts, rejections, fallbacks."""
        return {
            "regions": {name: r.status() for name, r in sorted(self.regions.items())},
            "transitions": dict(sorted(self.transitions.items())),
            "rejected": self.rejected,
            "ticker_errors": self.ticker_errors,
        }
