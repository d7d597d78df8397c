"""What the hot path calls for tracing, and the do-nothing version used when telemetry is off."""

from __future__ import annotations

from typing import Protocol

from guardproxy.transport import HeaderList, Request


class UpstreamCall(Protocol):
    """One call to the upstream, started before the request goes out."""

    def end(self, status: int, error_type: str | None = None) -> None:
        """The upstream answered with `status` (or failed: error_type names why)."""


class UpstreamTracer(Protocol):
    """Starts a CLIENT span per upstream call and adds its traceparent to the headers."""

    def upstream_call(self, request: Request, headers: HeaderList) -> UpstreamCall:
        """Begin an upstream call; headers are the ones about to be forwarded."""


class _NoCall:
    __slots__ = ()

    def end(self, status: int, error_type: str | None = None) -> None:
        """Nothing to record."""


class _NoTracer:
    __slots__ = ()

    def upstream_call(self, request: Request, headers: HeaderList) -> UpstreamCall:
        """Nothing to trace."""
        return NO_CALL


NO_CALL: UpstreamCall = _NoCall()
NO_TRACER: UpstreamTracer = _NoTracer()
