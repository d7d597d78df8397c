"""The gRPC port of `guardproxy serve`: the OIP proxy guarded by the HTTP path's policies.

Lives outside `guardproxy.grpc` so that an HTTP-only install (no grpcio) imports the
composition root; asking for the port without grpcio is a clear startup error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from guardproxy.breaker.board import BreakerBoard
from guardproxy.hotpath.bodies import BodyBudget
from guardproxy.hotpath.observation import Observation
from guardproxy.logs import AccessLog
from guardproxy.policy.table import PolicyTable
from guardproxy.policy.thresholds import Snapshot
from guardproxy.settings import Settings, parse_address
from guardproxy.transport.limiter import KeyLimiter

if TYPE_CHECKING:
    from guardproxy.grpc import GrpcProxy
    from guardproxy.grpc.calllog import CallTracer
    from guardproxy.grpc.guarding import PolicyHook
    from guardproxy.grpc.streams import StreamAnswers

MISSING = "--grpc-listen needs grpcio, the `grpc` extra: pip install 'guardproxy[grpc]' ({error})"


class GrpcUnavailable(RuntimeError):
    """The gRPC port was asked for, but grpcio is not installed."""


class GrpcPort:
    """The gRPC listener and its policy hook, started and stopped with the runtime."""

    def __init__(
        self,
        settings: Settings,
        policies: Snapshot[PolicyTable],
        breakers: BreakerBoard,
        observers: Sequence[Callable[[Observation], None]],
        tracer: CallTracer | None = None,
        budget: BodyBudget | None = None,
    ) -> None:
        if settings.grpc_listen is None or settings.grpc_upstream is None:
            raise ValueError("the gRPC port needs grpc_listen and grpc_upstream")
        try:
            from guardproxy.grpc import GrpcProxy
            from guardproxy.grpc.calllog import NO_TRACER, CallLog, observed
            from guardproxy.grpc.guarding import PolicyHook
        except ImportError as exc:
            raise GrpcUnavailable(MISSING.format(error=exc)) from exc
        self.listen = settings.grpc_listen
        self.upstream = settings.grpc_upstream
        self.hook: PolicyHook = PolicyHook(
            policies, breakers, (*observers, observed), region_key=settings.trust_region_header
        )
        # The data port's bound on upstream requests, per model, applies to inference calls:
        # --upstream-concurrency running, --upstream-queue waiting (its own slots, not shared).
        # No `grpc.max_concurrent_streams` from them: it bounds a connection, which carries
        # every model's calls (grpc clients share one), so a busy model would hold up the rest.
        limits = settings.limits
        self.proxy: GrpcProxy = GrpcProxy(
            settings.grpc_upstream,
            self.hook,
            max_message=settings.max_body,
            timeout=settings.timeouts.total,
            calls=CallLog(AccessLog(settings.access_log), tracer or NO_TRACER),
            limiter=KeyLimiter(limits.per_key, limits.queue, limits.queue_timeout),
            slot_key=self.hook.slot_key,
            max_calls=settings.grpc_max_calls or None,
            budget=budget,
            stream_answers=cast("StreamAnswers", settings.grpc_stream_answers),
            stream_idle=settings.grpc_stream_idle or None,
        )
        self.port: int | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Listen; the port bound."""
        self.port = await self.proxy.start(*self.listen)
        return self.port

    def drain(self, grace: float) -> None:
        """Stop accepting calls now; running ones get `grace` seconds (see `stopped`)."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self.proxy.stop(grace))

    async def stopped(self, grace: float) -> None:
        """Drain (if not begun) and wait until the server and its upstream channel are closed."""
        self.drain(grace)
        assert self._stopping is not None
        await self._stopping

    async def reachable(self, wait: float = 1.0) -> bool:
        """Whether a TCP connection to the gRPC upstream opens (readiness only)."""
        host, port = parse_address(self.upstream, "127.0.0.1")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    def status(self) -> dict[str, Any]:
        """The port, its upstream, the proxy's counters and what the policies did."""
        host, _ = self.listen
        return {
            "listen": f"{host}:{self.port if self.port is not None else self.listen[1]}",
            "upstream": self.upstream,
            "draining": self._stopping is not None,
            "calls": self.proxy.status(),
            "guards": self.hook.status(),
        }
