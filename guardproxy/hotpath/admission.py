"""Admission on the hot path: the breaker's verdict applied to an exchange, fallback pools."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, NamedTuple

from guardproxy.breaker.state import Admission, CircuitBreaker
from guardproxy.guards.exchange import Exchange
from guardproxy.hotpath.upstream import Limits, Timeouts, Upstream
from guardproxy.policy.table import PolicyTable

log = logging.getLogger("guardproxy.proxy")

OPEN_FLAG = "breaker:open"
FALLBACK_FLAG = "breaker:fallback"


class Admitted(NamedTuple):
    """How the breaker let one exchange through (a tuple: built in one step per request)."""

    breaker: CircuitBreaker
    admission: Admission
    fallback: bool

    @property
    def state(self) -> str:
        """The breaker's state when it was not closed, else ""."""
        name = self.breaker.state.name  # not state_name: a property within a property
        return "" if name == "closed" else name


def settle(
    breaker: CircuitBreaker,
    status: int | None,
    seconds: float,
    probe: bool,
    epoch: int | None = None,
) -> None:
    """Count one primary upstream call; a probe's outcome also goes to its half-open state."""
    breaker.record_upstream(status, seconds)
    if probe:
        breaker.probe_done(status is not None and status < 500, epoch)


class BreakerCall:
    """One guarded request's dealings with its breaker: the outcome counted once, or released."""

    __slots__ = ("admitted", "counted", "epoch", "probe")

    def __init__(self, admitted: Admitted) -> None:
        self.admitted = admitted
        self.counted = not admitted.fallback  # a fallback's answers say nothing of the model
        self.probe = admitted.admission is Admission.PROBE
        self.epoch = admitted.breaker.epoch

    def settle(self, status: int | None, seconds: float) -> None:
        """Count the primary upstream's answer (None: no answer) once."""
        if self.counted:
            settle(self.admitted.breaker, status, seconds, self.probe, self.epoch)
            self.probe = False
        self.counted = False

    def release(self) -> None:
        """A probe whose outcome was never counted frees its half-open slot."""
        if self.probe:
            self.admitted.breaker.release_probe(self.epoch)
            self.probe = False


def mark(ex: Exchange, breaker: CircuitBreaker, admission: Admission, fallback: bool) -> None:
    """Annotate an exchange served while the breaker is not closed (flags force sampling)."""
    ex.annotations["X-Guard-Breaker"] = breaker.state_name
    if admission is Admission.OPEN:
        ex.flags.append(OPEN_FLAG)
    if fallback:
        ex.annotations["X-Guard-Upstream"] = "fallback"
        ex.flags.append(FALLBACK_FLAG)


class Fallbacks:
    """The fallback upstream pools the policies' open actions name, opened and closed with them.

    A URL the pool cannot serve (not plain http://) is never ready: its breaker rejects with
    503 while open, and /status shows the URL as not ready.
    """

    def __init__(self, timeouts: Timeouts, limits: Limits | None = None) -> None:
        self.timeouts, self.limits = timeouts, limits or Limits()
        self.pools: dict[str, Upstream | None] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False

    def get(self, breaker: CircuitBreaker) -> Upstream | None:
        """The pool of a fallback breaker, None when not serving (or no fallback)."""
        url = breaker.spec.open.upstream
        if breaker.open_action != "fallback" or not self._running or url is None:
            return None
        return self.pools.get(url)

    def follow(self, table: PolicyTable) -> None:
        """Open pools for new fallback URLs, close those no policy names any more."""
        wanted = {
            model.spec.breaker.open.upstream
            for entry in table.regions.values()
            for model in entry.models
            if model.spec.breaker.open.action == "fallback" and model.spec.breaker.open.upstream
        }
        for url in sorted(wanted - self.pools.keys()):
            self.pools[url] = self._open(url)
        for url in sorted(self.pools.keys() - wanted):
            pool = self.pools.pop(url)
            if pool is not None:
                self._spawn(pool.close())

    def _open(self, url: str) -> Upstream | None:
        try:
            return Upstream(url, self.timeouts, self.limits)
        except ValueError as exc:
            log.error("fallback upstream not usable: %s", exc)
            return None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet: a pool never used has nothing to close
            work.close()
            return
        task = loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Serve from every pool."""
        self._running = True

    async def stop(self) -> None:
        """Close every pool."""
        self._running = False
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for pool in self.pools.values():
            if pool is not None:
                await pool.close()

    def status(self) -> dict[str, bool]:
        """Each fallback URL and whether its pool is ready."""
        return {url: self._running and pool is not None for url, pool in sorted(self.pools.items())}
