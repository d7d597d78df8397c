"""The hot path: forward every request; run guarded routes through the policy's guard chain."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from guardproxy.breaker.board import BreakerBoard
from guardproxy.breaker.state import CLOSED, Admission
from guardproxy.guards.base import GuardChain
from guardproxy.guards.exchange import Exchange, Reply
from guardproxy.hotpath.admission import Admitted, BreakerCall, Fallbacks, mark
from guardproxy.hotpath.bodies import guarded_headers, read_answer, read_request_body
from guardproxy.hotpath.hooks import NO_TRACER, UpstreamTracer
from guardproxy.hotpath.observation import Observation, observe, outcome_of
from guardproxy.hotpath.paths import origin_form, route_path
from guardproxy.hotpath.replies import (
    ProxyCounts,
    Refusal,
    annotate,
    breaker_open,
    error_response,
    relay_headers,
)
from guardproxy.hotpath.trust import Trust, request_id_of
from guardproxy.hotpath.upstream import (
    Upstream,
    UpstreamError,
    forward_request_headers,
    map_error,
)
from guardproxy.logs import AccessLog
from guardproxy.policy.routes import path_version
from guardproxy.policy.table import CompiledModel, CompiledPolicy, PolicyTable
from guardproxy.policy.thresholds import Snapshot

log = logging.getLogger("guardproxy.proxy")

NO_BODY_STATUS = frozenset({204, 304})
JSON_TYPES = ("application/json", "application/x-ndjson")
DEFAULT_MAX_BODY = 16 * 1024 * 1024
Observer = Callable[[Observation], None]
EXCHANGE = web.RequestKey("guardproxy.exchange", Exchange)  # for the access log's outcome


class Proxy:
    """The data port's single handler."""

    def __init__(
        self,
        upstream: Upstream,
        policies: Snapshot[PolicyTable],
        observers: Sequence[Observer] = (),
        breakers: BreakerBoard | None = None,
        fallbacks: Fallbacks | None = None,
        tracer: UpstreamTracer = NO_TRACER,
        trust: Trust | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        access: AccessLog | None = None,
    ) -> None:
        self.upstream = upstream
        self.policies = policies
        self.observers = tuple(observers)
        self.breakers = breakers or BreakerBoard(policies)
        self.fallbacks = fallbacks or Fallbacks(upstream.timeouts)
        self.tracer = tracer
        self.trust = trust or Trust()
        self.max_body = max_body
        self.access = access or AccessLog()
        self.counts = ProxyCounts()
        self._logged_at = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Forward one request, guarded when its path is one of the policy's routes."""
        started = time.perf_counter()
        request_id, replaced = request_id_of(request.headers.get("X-Request-Id"))
        region = self.trust.region_of(request.headers)
        policy, known = self.policies.current.resolve(region)
        counts = self.counts
        counts.requests += 1
        counts.request_ids_replaced += replaced
        counts.unknown_region += not known
        counts.in_flight += 1
        model: CompiledModel | None = None
        response: web.StreamResponse | None = None
        try:
            target = origin_form(request.raw_path)
            found = self._guarded_model(policy, target)
            if found is not None:
                counts.guarded += 1
                model = found[0]
                response = await self._guarded(request, request_id, *found, target)
            else:
                counts.unguarded += 1
                response = await self._stream(request, request_id, target)
        except UpstreamError as exc:
            counts.upstream_errors[exc.status] = counts.upstream_errors.get(exc.status, 0) + 1
            self._log_upstream(request_id, exc)
            response = error_response(exc.status, exc.message, request_id)
        except Refusal as exc:
            counts.refused[exc.status] = counts.refused.get(exc.status, 0) + 1
            response = error_response(exc.status, exc.message, request_id)
        except ConnectionError:  # the client went away: nobody to answer, nothing to log
            counts.client_gone += 1
            response = error_response(499, "client closed the connection", request_id)
        except web.HTTPException:
            raise
        except Exception:  # never a traceback or exception text to a client
            counts.internal_errors += 1
            log.exception("request %s failed inside the proxy", request_id)
            response = error_response(500, "internal error in the proxy", request_id)
        finally:
            counts.in_flight -= 1
            self._log_access(request, request_id, policy.region, model, response, started)
        return response

    def _log_access(
        self,
        request: web.Request,
        request_id: str,
        region: str,
        model: CompiledModel | None,
        response: web.StreamResponse | None,
        started: float,
    ) -> None:
        """The access log's one call, with plain values, when the request is finished."""
        if response is None:  # an exception is on its way out: 499 if the client left
            status, sent = 499 if isinstance(sys.exc_info()[1], asyncio.CancelledError) else 500, 0
        else:  # Content-Length, else what a stream wrote (its framing included)
            length = response.content_length
            status, sent = response.status, response.body_length if length is None else length
        guarded = model is not None and model.chain is not None
        self.access.record(
            request.method, request.raw_path, status, time.perf_counter() - started, sent,
            request_id, region, model.name if model is not None else "",
            _outcome(request.get(EXCHANGE)) if guarded else "unguarded",
        )  # fmt: skip

    def _guarded_model(
        self, policy: CompiledPolicy, target: str
    ) -> tuple[CompiledModel, str] | None:
        """The guarded model and normalised path when any reading of the path is a model's."""
        if not policy.models:
            return None
        route = route_path(target)
        for reading in route.readings():
            model = policy.match(reading)
            if model is not None and model.chain is not None:
                break
        else:
            return None
        if route.ambiguous:
            raise Refusal(400, "ambiguous encoding in a guarded path (%2F, %5C or %00)")
        return model, route.key

    async def _stream(
        self, request: web.Request, request_id: str, target: str
    ) -> web.StreamResponse:
        """Pass-through: bodies streamed both ways, byte for byte."""
        headers = forward_request_headers(request, request_id, self.trust.forwarded)
        data = request.content if request.body_exists else None
        upstream_response = await self._send(request, target, headers, data)
        async with upstream_response:
            return await self._relay(request, request_id, upstream_response)

    async def _send(
        self,
        request: web.Request,
        target: str,
        headers: CIMultiDict[str],
        data: Any,
        upstream: Upstream | None = None,
    ) -> aiohttp.ClientResponse:
        call = self.tracer.upstream_call(request, headers)
        upstream = upstream or self.upstream
        try:
            response = await upstream.session.request(
                request.method,
                upstream.url_for(target),
                headers=headers,
                data=data,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = map_error(exc)
            call.end(error.status, type(exc).__name__)
            raise error from exc
        call.end(response.status)
        return response

    async def _relay(
        self, request: web.Request, request_id: str, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=relay_headers(upstream.headers, request_id),
        )
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        if request.method == "HEAD" or upstream.status in NO_BODY_STATUS:
            await response.write_eof()
            return response
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Headers are gone; closing without the final chunk tells the client the truth.
            self.counts.aborted += 1
            log.warning("upstream failed mid-response for %s: %s", request_id, type(exc).__name__)
            _abort(request)
            return response
        await response.write_eof()
        return response

    async def _guarded(
        self, request: web.Request, request_id: str, model: CompiledModel, path: str, target: str
    ) -> web.StreamResponse:
        breaker = self.breakers.get(model)
        admission = breaker.admit()
        fallback = None
        if admission is Admission.OPEN and breaker.open_action != "flag":
            fallback = self.fallbacks.get(breaker)
            if fallback is None:
                self.breakers.rejected += 1
                return breaker_open(request_id, model, breaker)
        call = BreakerCall(Admitted(breaker, admission, fallback is not None))
        try:
            return await self._exchange(request, request_id, model, path, target, call, fallback)
        finally:
            call.release()  # a probe that never reached the upstream gives its slot back

    async def _exchange(
        self,
        request: web.Request,
        request_id: str,
        model: CompiledModel,
        path: str,
        target: str,
        call: BreakerCall,
        fallback: Upstream | None,
    ) -> web.StreamResponse:
        chain = cast(GuardChain, model.chain)
        body, decoded = await read_request_body(request, self.max_body)
        ex = Exchange(
            request_id=request_id,
            region=model.region,
            model=model.name,
            method=request.method,
            path=path,
            headers=request.headers,
            body=body,
            started=time.perf_counter(),
            version=path_version(path),
        )
        request[EXCHANGE] = ex
        admitted = call.admitted
        if admitted.breaker.state is not CLOSED:
            mark(ex, admitted.breaker, admitted.admission, admitted.fallback)
        await chain.on_request(ex)
        if ex.reply is not None:
            await chain.observe(ex)
            return self._finish_reply(ex, model, admitted)
        # A request the guards could not read is the client's doing, not the model's health.
        call.counted = call.counted and not ex.errors
        headers = guarded_headers(request, request_id, self.trust.forwarded, decoded)
        began = time.perf_counter()
        try:
            try:
                upstream_response = await self._send(request, target, headers, ex.body, fallback)
            except UpstreamError:
                call.settle(None, time.perf_counter() - began)
                raise
            call.settle(upstream_response.status, time.perf_counter() - began)
            async with upstream_response:
                if not _is_json(upstream_response) or request.method == "HEAD":
                    self.counts.unguarded_streams += 1
                    return await self._relay(request, request_id, upstream_response)
                await read_answer(ex, upstream_response, self.max_body)
                ex.upstream_seconds = time.perf_counter() - began
        except UpstreamError as exc:
            ex.status = exc.status
            ex.errors.append(exc.message)
            await chain.observe(ex)  # an errored exchange is always sampled
            self._observe(ex, model, admitted)
            raise
        if 200 <= ex.status < 300:
            await chain.on_response(ex)
        else:
            await chain.observe(ex)
        if ex.reply is not None:
            return self._finish_reply(ex, model, admitted)
        return self._finish(ex, model, admitted)

    def _finish(self, ex: Exchange, model: CompiledModel, admitted: Admitted) -> web.Response:
        headers = ex.response_headers
        body = ex.final_response_body()
        if ex.response_changed:
            headers.popall("Content-Encoding", None)
        headers.popall("Content-Length", None)
        annotate(headers, ex, model)
        self._observe(ex, model, admitted)
        return web.Response(status=ex.status, body=body, headers=headers)

    def _finish_reply(self, ex: Exchange, model: CompiledModel, admitted: Admitted) -> web.Response:
        reply: Reply = ex.reply  # type: ignore[assignment]
        self.counts.blocked += 1
        ex.status = reply.status
        response = error_response(reply.status, reply.error, ex.request_id, **reply.details)
        response.headers.update(reply.headers)
        annotate(response.headers, ex, model)
        self._observe(ex, model, admitted)
        return response

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

    def _log_upstream(self, request_id: str, exc: UpstreamError) -> None:
        """The detail of an upstream failure, at most once a second (an outage is loud enough)."""
        now = time.monotonic()
        if now - self._logged_at >= 1.0:
            self._logged_at = now
            log.warning(
                "upstream %s failed for %s: %s", self.upstream.display, request_id, exc.detail
            )


def _is_json(response: aiohttp.ClientResponse) -> bool:
    return response.content_type in JSON_TYPES and response.status not in NO_BODY_STATUS


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _outcome(ex: Exchange | None) -> str:
    """How the guards ended a guarded exchange, as the observation counts it."""
    if ex is None:
        return "refused"  # breaker open or body too large: the exchange never began
    if ex.status == 0 and not ex.errors:
        return "streamed"  # a non-JSON answer, passed through unguarded
    return outcome_of(ex)
