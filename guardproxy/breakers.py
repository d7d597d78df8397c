"""BreakerBoard: one circuit breaker per region, a 1 s ticker, and the fallback upstream pools."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

from .breaker import Admission, CircuitBreaker, Clock, Listener, OperatorState, Transition
from .exchange import Exchange
from .policy.models import BreakerSpec
from .policy.table import CompiledPolicy, PolicyTable
from .snapshots import Snapshot
from .tasks import cancel_and_wait
from .upstream import Timeouts, Upstream

log = logging.getLogger("guardproxy.breaker")

Ticker = Callable[[], None]
OPEN_FLAG = "breaker:open"
FALLBACK_FLAG = "breaker:fallback"


class BreakerTelemetry(Protocol):
    """What the board tells telemetry: transitions, and the state of new breakers."""

    def breaker_transition(self, transition: Transition) -> None:
        """One state change."""

    def breaker_state(self, region: str, state: str) -> None:
        """The state of a breaker that has not changed state yet."""


def describe(transition: Transition) -> str:
    """One log line: region, old -> new, the reason and the last window's numbers."""
    numbers = ", ".join(f"{k}={v:.4g}" for k, v in sorted(transition.values.items())) or "none"
    return (
        f"breaker {transition.region}: {transition.old} -> {transition.new} "
        f"({transition.reason}); last window: {numbers}"
    )


def settle(breaker: CircuitBreaker, status: int | None, seconds: float, probe: bool) -> None:
    """Count one primary upstream call; a probe's outcome also goes to the half-open state."""
    breaker.record_upstream(status, seconds)
    if probe:
        breaker.probe_done(status is not None and status < 500)


def mark(ex: Exchange, breaker: CircuitBreaker, admission: Admission, fallback: bool) -> None:
    """Annotate an exchange served while the breaker is not closed (flags force sampling)."""
    ex.annotations["X-Guard-Breaker"] = breaker.state_name
    if admission is Admission.OPEN:
        ex.flags.append(OPEN_FLAG)
    if fallback:
        ex.annotations["X-Guard-Upstream"] = "fallback"
        ex.flags.append(FALLBACK_FLAG)


class BreakerBoard:
    """Every region's breaker, rebuilt on a policy swap (state kept when the spec is the same)."""

    def __init__(
        self,
        policies: Snapshot[PolicyTable],
        timeouts: Timeouts | None = None,
        pool_size: int = 100,
        listeners: Iterable[Listener] = (),
        telemetry: BreakerTelemetry | None = None,
        clock: Clock = time.monotonic,
        interval: float = 1.0,
    ) -> None:
        self.policies, self.timeouts, self.pool_size = policies, timeouts or Timeouts(), pool_size
        self.telemetry, self.clock, self.interval = telemetry, clock, interval
        self.listeners: list[Listener] = [self._log, self._count, *listeners]
        if telemetry is not None:
            self.listeners.append(telemetry.breaker_transition)
        self.transitions: dict[str, int] = {}
        self.rejected = 0
        self.tickers: list[Ticker] = []
        self.ticker_errors = 0
        self.breakers: dict[str, CircuitBreaker] = {}
        self.fallbacks: dict[str, Upstream] = {}
        self._ready: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._running = False
        self._table: PolicyTable | None = None
        self._spare = CircuitBreaker(BreakerSpec(), clock, region="-")
        self.refresh()

    def get(self, policy: CompiledPolicy) -> CircuitBreaker:
        """The breaker of a policy's region (hot path: one identity check, one dict lookup)."""
        if self.policies.current is not self._table:
            self.refresh()
        return self.breakers.get(policy.region) or self._spare

    def breaker(self, region: str) -> CircuitBreaker | None:
        """The breaker of a region by its exact name."""
        return self.breakers.get(region)

    def fallback(self, breaker: CircuitBreaker) -> Upstream | None:
        """The started fallback pool of a fallback breaker, None when not ready (or no fallback)."""
        url = breaker.spec.open.upstream
        if breaker.open_action != "fallback" or url not in self._ready:
            return None
        return self.fallbacks[url]

    def refresh(self) -> None:
        """Match the breakers to the current policy table; same spec keeps the breaker's state."""
        table = self.policies.current
        old, self.breakers = self.breakers, {}
        for name, entry in table.regions.items():
            kept = old.get(name)
            spec = entry.policy.breaker
            same = kept is not None and kept.spec == spec
            self.breakers[name] = kept if same and kept is not None else self._new(name, spec)
        self._table = table
        self._sync_pools()

    def _new(self, region: str, spec: BreakerSpec) -> CircuitBreaker:
        breaker = CircuitBreaker(spec, self.clock, self.listeners, region)
        if self.telemetry is not None:
            self.telemetry.breaker_state(region, breaker.state_name)
        return breaker

    def _sync_pools(self) -> None:
        wanted = {
            b.spec.open.upstream
            for b in self.breakers.values()
            if b.spec.open.action == "fallback" and b.spec.open.upstream
        }
        for url in sorted(wanted - self.fallbacks.keys()):
            self.fallbacks[url] = Upstream(url, self.timeouts, self.pool_size)
            if self._running:
                self._spawn(self._start_pool(url))
        for url in sorted(self.fallbacks.keys() - wanted):
            self._ready.discard(url)
            pool = self.fallbacks.pop(url)
            if self._running:  # a pool never started has nothing to close
                self._spawn(pool.close())

    async def _start_pool(self, url: str) -> None:
        pool = self.fallbacks.get(url)
        if pool is not None:
            await pool.start()
            self._ready.add(url)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def force(self, region: str, state: str, reason: str) -> dict[str, Any]:
        """Operator override of one region (KeyError: unknown region, ValueError: bad state)."""
        if self.policies.current is not self._table:
            self.refresh()
        breaker = self.breakers[region]
        if state not in ("forced_open", "closed", "disabled"):
            raise ValueError(f"state must be forced_open, closed or disabled, not {state!r}")
        operator_state: OperatorState = state  # type: ignore[assignment]
        breaker.force(operator_state, reason or "no reason given")
        return breaker.status()

    def tick(self) -> None:
        """Once a second: follow policy swaps, close upstream windows, run the other tickers."""
        if self.policies.current is not self._table:
            self.refresh()
        for breaker in self.breakers.values():
            breaker.tick()
        for ticker in self.tickers:
            try:
                ticker()
            except Exception:
                self.ticker_errors += 1
                log.exception("breaker ticker %r failed", ticker)

    async def start(self) -> None:
        """Open the fallback pools and start the ticker."""
        self._running = True
        for url in sorted(self.fallbacks):
            await self._start_pool(url)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._run(), name="guardproxy-breakers")

    async def stop(self) -> None:
        """Stop the ticker and close every fallback pool."""
        self._running = False
        task, self._ticker = self._ticker, None
        await cancel_and_wait(task)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._ready.clear()
        for pool in self.fallbacks.values():
            await pool.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.tick()

    def _log(self, transition: Transition) -> None:
        level = logging.INFO if transition.new == "closed" else logging.WARNING
        log.log(level, describe(transition))

    def _count(self, transition: Transition) -> None:
        key = f"{transition.region}:{transition.new}"
        self.transitions[key] = self.transitions.get(key, 0) + 1

    def status(self) -> dict[str, Any]:
        """Per region: state, since, reason, last window values; transition counts, fallbacks."""
        return {
            "regions": {name: b.status() for name, b in sorted(self.breakers.items())},
            "transitions": dict(sorted(self.transitions.items())),
            "rejected": self.rejected,
            "fallbacks": {url: url in self._ready for url in sorted(self.fallbacks)},
            "ticker_errors": self.ticker_errors,
        }
