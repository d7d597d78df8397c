"""Plain counters for /status: ints mutated on one event loop, so no locks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ServerCounters:
    """What the data port's server did."""

    connections: int = 0  # accepted since start
    open: int = 0
    requests: int = 0
    in_flight: int = 0
    idle_closed: int = 0  # keep-alive connections closed after their idle timeout
    errors: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> None:
        """One more error of this kind."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view."""
        return {
            "connections": self.connections,
            "open": self.open,
            "requests": self.requests,
            "in_flight": self.in_flight,
            "idle_closed": self.idle_closed,
            "errors": dict(self.errors),
        }


@dataclass(slots=True)
class PoolCounters:
    """What the upstream pool did."""

    requests: int = 0
    connects: int = 0  # connections opened
    open: int = 0
    idle: int = 0
    reused: int = 0  # requests sent on a kept-alive connection
    retried: int = 0  # requests sent again after a reused connection failed unanswered
    idle_closed: int = 0  # idle connections closed by either side or expired
    errors: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> None:
        """One more error of this kind."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view."""
        return {
            "requests": self.requests,
            "connects": self.connects,
            "open": self.open,
            "idle": self.idle,
            "reused": self.reused,
            "retried": self.retried,
            "idle_closed": self.idle_closed,
            "errors": dict(self.errors),
        }
