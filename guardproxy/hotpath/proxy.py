"""The hot path: forward every request; run guarded routes through the policy's guard chain."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import cast

from guardproxy.breaker.board import BreakerBoard
from guardproxy.breaker.state import CLOSED, Admission
from guardproxy.guards.base import GuardChain
from guardproxy.guards.exchange import Exchange, media_type
from guardproxy.hotpath.admission import Admitted, Fallbacks, mark, settle
from guardproxy.hotpath.hooks import NO_TRACER, UpstreamTracer
from guardproxy.hotpath.observation import Observation, observe
from guardproxy.hotpath.relay import NO_BODY_STATUS, reason_of, relay, request_body
from guardproxy.hotpath.replies import (
    JSON,
    ModelWire,
    ModelWires,
    ProxyCounts,
    annotated,
    breaker_open,
    error_body,
    fail,
    header_name,
    request_id_of,
)
from guardproxy.hotpath.targets import origin_form, route_path
from guardproxy.hotpath.upstream import (
    Upstream,
    UpstreamError,
    forward_request_headers,
    forward_response_headers,
)
from guardproxy.policy.routes import path_version
from guardproxy.policy.table import CompiledModel, PolicyTable
from guardproxy.policy.thresholds import Snapshot
from guardproxy.transport import Request, RequestError, ResponseWriter

log = logging.getLogger("guardproxy.proxy")

JSON_TYPES = frozenset({b"application/json", b"application/x-ndjson"})
UNGUARDED = "unguarded"  # the pool key of traffic no model's routes name
DEFAULT_MAX_BODY = 16 * 1024 * 1024
Observer = Callable[[Observation], None]


class Proxy:
    """The data port's single handler."""

    def __init__(
        self,
        upstream: Upstream,
        policies: Snapshot[PolicyTable],
        region_header: str = "X-Region",
        observers: Sequence[Observer] = (),
        breakers: BreakerBoard | None = None,
        fallbacks: Fallbacks | None = None,
        tracer: UpstreamTracer = NO_TRACER,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.upstream = upstream
        self.policies = policies
        self.region_header = region_header.lower().encode("latin-1")
        self.observers = tuple(observers)
        self.breakers = breakers or BreakerBoard(policies)
        self.fallbacks = fallbacks or Fallbacks(upstream.timeouts, upstream.limits)
        self.tracer = tracer
        self.max_body = max_body
        self.counts = ProxyCounts()
        self.wires = ModelWires()

    async def handle(self, request: Request, writer: ResponseWriter) -> None:
        """Forward one request, guarded when its path is one of the policy's routes."""
        request_id = request_id_of(request)
        policy, known = self.policies.current.resolve(self.region_of(request))
        counts = self.counts
        counts.requests += 1
        counts.unknown_region += not known
        counts.in_flight += 1
        try:
            target = origin_form(request.target)
            path = route_path(target)
            model = policy.match(path)
            if model is not None and model.chain is not None:
                counts.guarded += 1
                await self._guarded(request, writer, request_id, target, path, model)
            else:
                counts.unguarded += 1
                await self._pass(request, writer, request_id, target)
        except UpstreamError as exc:
            counts.upstream_errors[exc.status] = counts.upstream_errors.get(exc.status, 0) + 1
            fail(writer, exc.status, exc.message, request_id)
        except RequestError as exc:  # body too large, too slow, malformed: the client's doing
            counts.refused[exc.status] = counts.refused.get(exc.status, 0) + 1
            fail(writer, exc.status, exc.message, request_id)
        finally:
            counts.in_flight -= 1
            self.finished(request, writer, request_id)

    def region_of(self, request: Request) -> str | None:
        """The region a request names in the region header, if any."""
        region = request.headers.get(self.region_header)
        return region.decode("latin-1") if region is not None else None

    async def read_body(self, request: Request) -> bytes:
        """A guarded request's body, whole (RequestError 413 over --max-body)."""
        return await request.read(self.max_body)

    def finished(self, request: Request, writer: ResponseWriter, request_id: str) -> None:
        """Every request ends here once, answered or not (writer.status, writer.aborted).

        The one place a finished request is recorded: an access log line belongs here.
        """

    async def _pass(
        self, request: Request, writer: ResponseWriter, request_id: str, target: bytes
    ) -> None:
        """Pass-through: bodies streamed both ways, byte for byte."""
        rid = request_id.encode("latin-1")
        headers = forward_request_headers(request, rid)
        body, length = await request_body(request)
        upstream = self.upstream
        call = self.tracer.upstream_call(request, headers)
        try:
            response = await upstream.pool.request(
                request.method, upstream.target(target), headers, body,
                key=UNGUARDED, content_length=length,
            )  # fmt: skip
        except UpstreamError as exc:
            call.end(exc.status, exc.kind)
            raise
        call.end(response.status)
        await relay(request, writer, response, rid, self.counts)

    async def _guarded(
        self,
        request: Request,
        writer: ResponseWriter,
        request_id: str,
        target: bytes,
        path: str,
        model: CompiledModel,
    ) -> None:
        breaker = self.breakers.get(model)
        admission = breaker.admit()
        wire = self.wires(model)
        fallback = None
        if admission is Admission.OPEN and breaker.open_action != "flag":
            fallback = self.fallbacks.get(breaker)
            if fallback is None:
                self.breakers.rejected += 1
                breaker_open(writer, request_id, model, breaker, wire.headers)
                return
        body = await self.read_body(request)
        ex = Exchange(
            request_id=request_id,
            region=model.region,
            model=model.name,
            method=request.method.decode("latin-1"),
            path=path,
            headers=request.headers,
            body=body,
            started=perf_counter(),
            version=path_version(path),
        )
        admitted = Admitted(breaker, admission, fallback is not None)
        if breaker.state is not CLOSED:
            mark(ex, breaker, admission, fallback is not None)
        chain = cast(GuardChain, model.chain)
        await chain.on_request(ex)
        if ex.reply is not None:
            await chain.observe(ex)
            self._reply(writer, ex, admitted, wire)
            return
        try:
            await self._ask(request, writer, ex, target, admitted, fallback or self.upstream, wire)
        except UpstreamError as exc:
            ex.status = exc.status
            ex.errors.append(exc.message)
            await chain.observe(ex)  # an errored exchange is always sampled
            self._observe(ex, model, admitted)
            raise

    async def _ask(
        self,
        request: Request,
        writer: ResponseWriter,
        ex: Exchange,
        target: bytes,
        admitted: Admitted,
        upstream: Upstream,
        wire: ModelWire,
    ) -> None:
        """The upstream's answer through the guards (a non-JSON answer streams through)."""
        rid = ex.request_id.encode("latin-1")
        headers = forward_request_headers(request, rid)
        call = self.tracer.upstream_call(request, headers)
        began = perf_counter()
        try:
            response = await upstream.pool.request(
                request.method, upstream.target(target), headers, ex.body, key=wire.pool_key
            )
        except UpstreamError as exc:
            call.end(exc.status, exc.kind)
            self._settle(admitted, None, perf_counter() - began)
            raise
        call.end(response.status)
        self._settle(admitted, response.status, perf_counter() - began)
        content_type = media_type(response.headers.get(b"content-type"))
        if (
            content_type not in JSON_TYPES
            or response.status in NO_BODY_STATUS
            or request.method == b"HEAD"
        ):
            self.counts.unguarded_streams += 1
            await relay(request, writer, response, rid, self.counts)
            return
        ex.response_body = await response.read(self.max_body)
        ex.upstream_seconds = perf_counter() - began
        ex.status = response.status
        ex.response_headers = forward_response_headers(response.headers)
        ex.response_type = content_type
        chain = cast(GuardChain, wire.model.chain)
        if 200 <= ex.status < 300:
            await chain.on_response(ex)
        else:
            await chain.observe(ex)
        if ex.reply is not None:
            self._reply(writer, ex, admitted, wire)
        else:
            self._answer(writer, ex, admitted, wire, reason_of(response))

    def _settle(self, admitted: Admitted, status: int | None, seconds: float) -> None:
        """Count a call of the model's own upstream (a fallback's answers say nothing of it)."""
        if not admitted.fallback:
            settle(admitted.breaker, status, seconds, admitted.admission is Admission.PROBE)

    def _answer(
        self,
        writer: ResponseWriter,
        ex: Exchange,
        admitted: Admitted,
        wire: ModelWire,
        reason: bytes | None,
    ) -> None:
        body = ex.final_response_body()
        headers = ex.response_headers
        if ex.response_changed:
            headers = [(k, v) for k, v in headers if k.lower() != b"content-encoding"]
        try:
            writer.send(ex.status, annotated(headers, ex, wire.headers), body, reason)
        finally:
            self._observe(ex, wire.model, admitted)

    def _reply(
        self, writer: ResponseWriter, ex: Exchange, admitted: Admitted, wire: ModelWire
    ) -> None:
        reply = ex.reply
        assert reply is not None
        self.counts.blocked += 1
        ex.status = reply.status
        headers = [JSON, *((header_name(k), v.encode("latin-1")) for k, v in reply.headers.items())]
        body = error_body(reply.error, ex.request_id, **reply.details)
        try:
            writer.send(reply.status, annotated(headers, ex, wire.headers), body)
        finally:
            self._observe(ex, wire.model, admitted)

    def _observe(self, ex: Exchange, model: CompiledModel, admitted: Admitted) -> None:
        """Hand every observer the same immutable record; a failing observer is counted."""
        observation = observe(ex, model, admitted)
        for observer in self.observers:
            try:
                observer(observation)
            except Exception:
                name = getattr(observer, "__qualname__", type(observer).__name__)
                errors = self.counts.observer_errors
                errors[name] = errors.get(name, 0) + 1
                log.exception("observer %s failed on %s", name, ex.request_id)
