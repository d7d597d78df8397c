"""Counters of the gRPC proxy, for /status."""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc

__all__ = ["GrpcStats"]


class GrpcStats:
    """Calls by kind, final statuses, refusals and every failure mode, counted."""

    __slots__ = ("active", "calls", "errors", "refused", "statuses", "upstream")

    def __init__(self) -> None:
        self.active = 0
        self.calls: Counter[str] = Counter()  # infer, stream, stream_message, forward
        self.statuses: Counter[str] = Counter()  # final status sent to clients, by name
        self.upstream: Counter[str] = Counter()  # non-OK statuses from the upstream
        self.refused: Counter[str] = Counter()  # hook refusals, by status
        self.errors: Counter[str] = Counter()  # decode, hook, encode, unpaired, ...

    def status(self, code: grpc.StatusCode) -> None:
        """Count a final status."""
        self.statuses[code.name] += 1

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "active": self.active,
            "calls": dict(self.calls),
            "statuses": dict(self.statuses),
            "upstream_errors": dict(self.upstream),
            "refused": dict(self.refused),
            "errors": dict(self.errors),
        }
