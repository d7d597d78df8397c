"""The hot path: forward every request; run guarded routes through the policy's guard chain."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from guardproxy.breaker.board import BreakerBoard
from guardproxy.breaker.state import CLOSED, Admission, CircuitBreaker
from guardproxy.guards.base import GuardChain
from guardproxy.guards.exchange import Exchange, Reply, dumps
from guardproxy.hotpath.admission import Admitted, Fallbacks, mark, settle
from guardproxy.hotpath.hooks import NO_TRACER, UpstreamTracer
from guardproxy.hotpath.observation import Observation, observe, outcome_of
from guardproxy.hotpath.upstream import (
    Upstream,
    UpstreamError,
    forward_request_headers,
    forward_response_headers,
    map_error,
)
from guardproxy.logs import AccessLog
from guardproxy.policy.routes import path_version
from guardproxy.policy.table import CompiledModel, PolicyTable
from guardproxy.policy.thresholds import Snapshot

log = logging.getLogger("guardproxy.proxy")

NO_BODY_STATUS = frozenset({204, 304})
JSON_TYPES = ("application/json", "application/x-ndjson")
Observer = Callable[[Observation], None]
EXCHANGE = web.RequestKey("guardproxy.exchange", Exchange)  # for the access log's outcome


@dataclass(slots=True)
class ProxyCounts:
    """Plain counters the admin port reports; ints, so no locks in a single event loop."""

    requests: int = 0
    guarded: int = 0
    unguarded: int = 0
    in_flight: int = 0
    unknown_region: int = 0
    upstream_errors: dict[int, int] = field(default_factory=dict)
    aborted: int = 0
    blocked: int = 0
    unguarded_streams: int = 0
    observer_errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view for /status."""
        return {
            "requests": self.requests,
            "guarded": self.guarded,
            "unguarded": self.unguarded,
            "in_flight": self.in_flight,
            "unknown_region": self.unknown_region,
            "upstream_errors": {str(k): v for k, v in self.upstream_errors.items()},
            "aborted": self.aborted,
            "blocked": self.blocked,
            "unguarded_streams": self.unguarded_streams,
            "observer_errors": dict(self.observer_errors),
        }


def new_request_id() -> str:
    """A random 128-bit id, hex encoded."""
    return os.urandom(16).hex()


def error_response(status: int, message: str, request_id: str, **extra: Any) -> web.Response:
    """Every error the proxy itself gives: a JSON body naming the request."""
    body = {"error": message, "request_id": request_id, **extra}
    return web.Response(
        status=status,
        body=dumps(body),
        content_type="application/json",
        headers={"X-Request-Id": request_id},
    )


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
        access: AccessLog | None = None,
    ) -> None:
        self.upstream = upstream
        self.policies = policies
        self.region_header = region_header
        self.observers = tuple(observers)
        self.breakers = breakers or BreakerBoard(policies)
        self.fallbacks = fallbacks or Fallbacks(upstream.timeouts)
        self.tracer = tracer
        self.access = access or AccessLog()
        self.counts = ProxyCounts()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Forward one request, guarded when its path is one of the policy's routes."""
        started = time.perf_counter()
        request_id = request.headers.get("X-Request-Id") or new_request_id()
        policy, known = self.policies.current.resolve(request.headers.get(self.region_header))
        counts = self.counts
        counts.requests += 1
        counts.unknown_region += not known
        counts.in_flight += 1
        model, response = None, None
        try:
            model = policy.match(request.path)
            if model is not None and model.chain is not None:
                counts.guarded += 1
                response = await self._guarded(request, request_id, model)
            else:
                counts.unguarded += 1
                response = await self._stream(request, request_id)
            return response
        except UpstreamError as exc:
            counts.upstream_errors[exc.status] = counts.upstream_errors.get(exc.status, 0) + 1
            response = error_response(exc.status, exc.message, request_id)
            return response
        finally:
            counts.in_flight -= 1
            self._log_access(request, request_id, policy.region, model, response, started)

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

    async def _stream(self, request: web.Request, request_id: str) -> web.StreamResponse:
        """Pass-through: bodies streamed both ways, byte for byte."""
        upstream_response = await self._send(request, request_id, _request_payload(request))
        async with upstream_response:
            return await self._relay(request, request_id, upstream_response)

    async def _send(
        self,
        request: web.Request,
        request_id: str,
        data: Any,
        upstream: Upstream | None = None,
        breaker: CircuitBreaker | None = None,
        probe: bool = False,
    ) -> aiohttp.ClientResponse:
        headers = forward_request_headers(request, request_id)
        call = self.tracer.upstream_call(request, headers)
        upstream = upstream or self.upstream
        began = time.perf_counter()
        try:
            response = await upstream.session.request(
                request.method,
                upstream.url_for(request.raw_path),
                headers=headers,
                data=data,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = map_error(exc)
            call.end(error.status, type(exc).__name__)
            if breaker is not None:
                settle(breaker, None, time.perf_counter() - began, probe)
            raise error from exc
        call.end(response.status)
        if breaker is not None:
            settle(breaker, response.status, time.perf_counter() - began, probe)
        return response

    async def _relay(
        self, request: web.Request, request_id: str, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=_response_headers(upstream.headers, request_id),
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
            log.warning("upstream failed mid-response for %s: %r", request_id, exc)
            _abort(request)
            return response
        await response.write_eof()
        return response

    async def _guarded(
        self, request: web.Request, request_id: str, model: CompiledModel
    ) -> web.StreamResponse:
        chain = cast(GuardChain, model.chain)
        breaker = self.breakers.get(model)
        admission = breaker.admit()
        fallback = None
        if admission is Admission.OPEN and breaker.open_action != "flag":
            fallback = self.fallbacks.get(breaker)
            if fallback is None:
                self.breakers.rejected += 1
                return _breaker_open(request_id, model, breaker)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            return error_response(413, exc.text or "request body too large", request_id)
        ex = Exchange(
            request_id=request_id,
            region=model.region,
            model=model.name,
            method=request.method,
            path=request.path,
            headers=request.headers,
            body=body,
            started=time.perf_counter(),
            version=path_version(request.path),
        )
        request[EXCHANGE] = ex
        admitted = Admitted(breaker, admission, fallback is not None)
        if breaker.state is not CLOSED:
            mark(ex, breaker, admission, fallback is not None)
        await chain.on_request(ex)
        if ex.reply is not None:
            await chain.observe(ex)
            return self._finish_reply(ex, model, admitted)
        began = time.perf_counter()
        try:
            upstream_response = await self._send(
                request, request_id, ex.body, fallback, None if fallback else breaker,
                admission is Admission.PROBE,
            )  # fmt: skip
            async with upstream_response:
                if not _is_json(upstream_response) or request.method == "HEAD":
                    self.counts.unguarded_streams += 1
                    return await self._relay(request, request_id, upstream_response)
                ex.response_body = await _read(upstream_response)
                ex.upstream_seconds = time.perf_counter() - began
                ex.status = upstream_response.status
                ex.response_headers = forward_response_headers(upstream_response.headers)
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
        _annotate(headers, ex, model)
        self._observe(ex, model, admitted)
        return web.Response(status=ex.status, body=body, headers=headers)

    def _finish_reply(self, ex: Exchange, model: CompiledModel, admitted: Admitted) -> web.Response:
        reply: Reply = ex.reply  # type: ignore[assignment]
        self.counts.blocked += 1
        ex.status = reply.status
        response = error_response(reply.status, reply.error, ex.request_id, **reply.details)
        response.headers.update(reply.headers)
        _annotate(response.headers, ex, model)
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


def _breaker_open(request_id: str, model: CompiledModel, breaker: CircuitBreaker) -> web.Response:
    """503 while the breaker is open (reject, or a fallback that is not ready)."""
    response = error_response(
        503,
        "circuit breaker open",
        request_id,
        region=model.region,
        model=model.name,
        reason=breaker.reason,
    )
    response.headers["Retry-After"] = str(breaker.retry_after())
    response.headers["X-Guard-Breaker"] = breaker.state_name
    response.headers["X-Guard-Region"] = model.region
    response.headers["X-Guard-Model"] = model.name
    response.headers["X-Guard-Policy"] = model.policy_version
    return response


def _annotate(headers: CIMultiDict[str] | Any, ex: Exchange, model: CompiledModel) -> None:
    headers["X-Request-Id"] = ex.request_id
    headers["X-Guard-Region"] = model.region
    headers["X-Guard-Model"] = model.name
    headers["X-Guard-Policy"] = model.policy_version
    headers.update(ex.annotations)


def _response_headers(upstream: Any, request_id: str) -> CIMultiDict[str]:
    headers = forward_response_headers(upstream)
    headers.popall("Content-Length", None)  # set through content_length to keep framing exact
    headers["X-Request-Id"] = request_id
    return headers


def _outcome(ex: Exchange | None) -> str:
    """How the guards ended a guarded exchange, as the observation counts it."""
    if ex is None:
        return "refused"  # breaker open or body too large: the exchange never began
    if ex.status == 0 and not ex.errors:
        return "streamed"  # a non-JSON answer, passed through unguarded
    return outcome_of(ex)


def _request_payload(request: web.Request) -> Any:
    if request.body_exists:
        return request.content
    return None


def _is_json(response: aiohttp.ClientResponse) -> bool:
    return response.content_type in JSON_TYPES and response.status not in NO_BODY_STATUS


async def _read(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise map_error(exc) from exc


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
