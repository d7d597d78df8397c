"""The hot path: forward every request; run guarded routes through the policy's guard chain."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from time import monotonic, perf_counter

from guardproxy.breaker.board import BreakerBoard
from guardproxy.hotpath.admission import Fallbacks
from guardproxy.hotpath.bodies import BodyBudget, BodyHold, read_request_body
from guardproxy.hotpath.guarded import GuardedSteps, Observer
from guardproxy.hotpath.hooks import NO_TRACER, UpstreamTracer
from guardproxy.hotpath.paths import origin_form, route_path
from guardproxy.hotpath.relay import relay, request_body
from guardproxy.hotpath.replies import ModelWires, ProxyCounts, Refusal, fail
from guardproxy.hotpath.trust import (
    AMBIGUOUS,
    AMBIGUOUS_REGION,
    Trust,
    request_id_of,
    trusted_value,
)
from guardproxy.hotpath.upstream import (
    Upstream,
    UpstreamError,
    client_message,
    forward_request_headers,
)
from guardproxy.logs import AccessLog
from guardproxy.payloads.errors import MAX_ROWS
from guardproxy.policy.table import CompiledModel, CompiledPolicy, PolicyTable
from guardproxy.policy.thresholds import Snapshot
from guardproxy.transport import ClientDisconnected, Request, RequestError, ResponseWriter

log = logging.getLogger("guardproxy.proxy")

UNGUARDED = "unguarded"  # the pool key of traffic no model's routes name (and its log outcome)
UNGUARDED_REFUSED = "no guarded model serves this path"  # unguarded.action: refuse
DEFAULT_MAX_BODY = 16 * 1024 * 1024
DEFAULT_MAX_BUFFERED = 256 * 1024 * 1024


class Proxy(GuardedSteps):
    """The data port's single handler (the guarded exchange's steps in GuardedSteps)."""

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
        max_rows: int = MAX_ROWS,
        access: AccessLog | None = None,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        self.upstream = upstream
        self.policies = policies
        self.observers = tuple(observers)
        self.breakers = breakers or BreakerBoard(policies)
        self.fallbacks = fallbacks or Fallbacks(upstream.timeouts, upstream.limits)
        self.tracer = tracer
        self.trust = trust or Trust()
        self.region_key = self.trust.region_key
        self.max_body = max_body
        self.max_rows = max_rows  # choices of a chat stream, each scanned on its own
        self.bodies = BodyBudget(max(max_buffered, max_body))  # one whole body always fits
        self.access = access or AccessLog()
        self.counts = ProxyCounts()
        self.wires = ModelWires()
        self._logged_at = float("-inf")

    async def handle(self, request: Request, writer: ResponseWriter) -> None:
        """Forward one request, guarded when any reading of its path is a guarded route."""
        started = perf_counter()
        request_id = self.request_id_of(request)
        region = self.region_of(request)
        policy, known = self.policies.current.resolve(None if region is AMBIGUOUS else region)
        counts = self.counts
        counts.requests += 1
        counts.unknown_region += not known
        counts.in_flight += 1
        model: CompiledModel | None = None
        outcome = UNGUARDED
        try:
            if region is AMBIGUOUS:
                raise RequestError(AMBIGUOUS_REGION)
            target = request.target
            found: tuple[CompiledModel, str] | None = None
            if target.startswith(b"/"):
                found = self.guarded_model(policy, target)
            else:  # absolute form: the upstream gets path and query; `*` no route names
                options = request.method == b"OPTIONS"
                target = origin_form(target.decode("latin-1"), options).encode("latin-1")
                if target != b"*":
                    found = self.guarded_model(policy, target)
            if found is None:
                if policy.allowed is not None and self.refuses(policy, target):
                    counts.unguarded_refused += 1
                    raise Refusal(404, UNGUARDED_REFUSED)
                counts.unguarded += 1
                await self._pass(request, writer, request_id, target)
            else:
                counts.guarded += 1
                model = found[0]
                outcome = "refused"  # until the exchange begins
                outcome = await self._guarded(request, writer, request_id, target, *found)
        except UpstreamError as exc:
            outcome = "error" if model is not None else outcome
            self._upstream_failed(writer, request_id, exc)
        except RequestError as exc:  # too large, too slow, malformed, badly encoded: the client's
            counts.refused[exc.status] = counts.refused.get(exc.status, 0) + 1
            headers = exc.headers if isinstance(exc, Refusal) else None  # a 503's Retry-After
            fail(writer, exc.status, exc.message, request_id, headers)
        except ClientDisconnected:  # nobody to answer, nothing to log
            counts.client_gone += 1
            writer.abort()
        except Exception:  # never a traceback or exception text to a client
            counts.internal_errors += 1
            outcome = "error" if model is not None else outcome
            log.exception("request %s failed inside the proxy", request_id)
            fail(writer, 500, "internal error in the proxy", request_id)
        finally:
            counts.in_flight -= 1
            self.finished(request, writer, request_id, started, policy.region, model, outcome)

    def request_id_of(self, request: Request) -> str:
        """The client's X-Request-Id when well-formed, else a new one (replacements counted)."""
        raw = request.headers.get(b"x-request-id")
        if raw is None:
            return request_id_of(None)[0]
        request_id, replaced = request_id_of(raw.decode("latin-1"))
        self.counts.request_ids_replaced += replaced
        return request_id

    def region_of(self, request: Request) -> str | None:
        """The region a request names, when the operator trusts a header to name one
        (AMBIGUOUS when it names more than one)."""
        key = self.region_key
        if key is None:
            return None
        return trusted_value([v.decode("latin-1") for v in request.headers.getall(key)])

    @staticmethod
    def refuses(policy: CompiledPolicy, target: bytes) -> bool:
        """Whether the region refuses this unguarded path (any reading outside its allow)."""
        return policy.refuses(route_path(target.decode("latin-1")).readings())

    def guarded_model(
        self, policy: CompiledPolicy, target: bytes
    ) -> tuple[CompiledModel, str] | None:
        """The guarded model and normalised path when any reading of the path is a model's."""
        if not policy.models:
            return None
        route = route_path(target.decode("latin-1"))
        model = policy.match(route.path)
        if model is None or model.chain is None:
            for reading in route.readings()[1:]:
                model = policy.match(reading)
                if model is not None and model.chain is not None:
                    break
            else:
                return None
        if route.ambiguous:
            raise Refusal(400, "ambiguous encoding in a guarded path (%2F, %5C or %00)")
        return model, route.key

    def read_body(self, request: Request, hold: BodyHold) -> Awaitable[tuple[bytes, bool]]:
        """A guarded request's body, decoded; True when it came encoded (413, 415, 400).

        Its bytes are held in the process's budget first: 503 when they do not fit. The
        reading's own coroutine is returned: one await level less.
        """
        return read_request_body(request, self.max_body, hold)

    def finished(
        self,
        request: Request,
        writer: ResponseWriter,
        request_id: str,
        started: float,
        region: str,
        model: CompiledModel | None,
        outcome: str,
    ) -> None:
        """Every request ends here once, answered or not: its access log record."""
        access = self.access
        if not access.enabled:
            return
        access.record(
            request.method.decode("latin-1"), request.target.decode("latin-1"),
            writer.status or 499, perf_counter() - started, writer.sent, request_id, region,
            model.name if model is not None else "", outcome,
        )  # fmt: skip

    async def _pass(
        self, request: Request, writer: ResponseWriter, request_id: str, target: bytes
    ) -> None:
        """Pass-through: bodies streamed both ways, byte for byte."""
        rid = request_id.encode("latin-1")
        upstream = self.upstream
        headers = forward_request_headers(request, rid, self.trust.forwarded)
        if upstream.authorization is not None:
            upstream.authorize(headers)
        body, length = await request_body(request)
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

    def _upstream_failed(self, writer: ResponseWriter, request_id: str, exc: UpstreamError) -> None:
        """Count, log (at most once a second: an outage is loud enough) and answer the client."""
        counts = self.counts
        counts.upstream_errors[exc.status] = counts.upstream_errors.get(exc.status, 0) + 1
        now = monotonic()
        if now - self._logged_at >= 1.0:
            self._logged_at = now
            log.warning(
                "upstream %s failed for %s: %s (%s)",
                self.upstream.display, request_id, exc.message, exc.kind,
            )  # fmt: skip
        fail(writer, exc.status, client_message(exc), request_id)
