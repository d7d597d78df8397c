"""Counters of the gRPC proxy, for /status."""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc

__all__ = ["GrpcStats", "GuardStats"]


class GrpcStats:
    """Calls by kind, final statuses, refusals and every failure mode, counted."""

    __slots__ = ("active", "busy", "calls", "errors", "refused", "statuses", "upstream")

    def __init__(self) -> None:
        self.active = 0
        self.calls: Counter[str] = Counter()  # infer, stream, stream_message, stream_held, forward
        self.statuses: Counter[str] = Counter()  # final status sent to clients, by name
        self.upstream: Counter[str] = Counter()  # non-OK statuses from the upstream
        self.refused: Counter[str] = Counter()  # hook refusals, by status
        self.busy: Counter[str] = Counter()  # refused RESOURCE_EXHAUSTED: no slot, by key
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
            "busy": dict(self.busy),
            "errors": dict(self.errors),
        }


class GuardStats:
    """What the policy hook did with the calls it saw, counted for /status."""

    __slots__ = (
        "blocked",
        "calls",
        "failures",
        "guarded",
        "observer_errors",
        "refused",
        "request_ids_replaced",
        "undecodable",
        "unguarded",
        "unknown_region",
        "unpaired",
    )

    def __init__(self) -> None:
        self.calls = 0  # inference requests seen (a stream counts each message)
        self.guarded = 0
        self.unguarded: Counter[str] = Counter()  # by reason: undeclared_model, not_oip, ...
        self.unknown_region = 0
        self.request_ids_replaced = 0  # a client's malformed x-request-id or id
        self.refused: Counter[str] = Counter()  # breaker_reject, breaker_fallback, too_many_rows
        self.blocked = 0  # a guard answered instead of the model
        self.undecodable = 0  # guarded calls whose tensors could not be decoded
        self.failures: Counter[str] = Counter()  # guarded calls without an answer, by status
        self.unpaired = 0  # answers with no guarded request waiting (decoupled models)
        self.observer_errors: Counter[str] = Counter()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "calls": self.calls,
            "guarded": self.guarded,
            "unguarded": dict(self.unguarded),
            "unknown_region": self.unknown_region,
            "request_ids_replaced": self.request_ids_replaced,
            "refused": dict(self.refused),
            "blocked": self.blocked,
            "undecodable": self.undecodable,
            "failures": dict(self.failures),
            "unpaired": self.unpaired,
            "observer_errors": dict(self.observer_errors),
        }
