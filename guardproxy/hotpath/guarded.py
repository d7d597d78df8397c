"""A guarded route's exchange: breaker admission, the guard chain both ways, the observers.

`GuardedSteps` is the part of the data port's handler (`Proxy`) that runs once a request's
path is a guarded model's; the handler supplies what the steps read.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import cast

from guardproxy.breaker.board import BreakerBoard
from guardproxy.breaker.state import CLOSED, Admission
from guardproxy.guards.exchange import Exchange, media_type
from guardproxy.hotpath.admission import Admitted, BreakerCall, Fallbacks, mark
from guardproxy.hotpath.bodies import (
    BodyBudget,
    BodyHold,
    applied_codings,
    binary_request,
    changed_headers,
    guarded_headers,
    read_answer,
    stream_headers,
)
from guardproxy.hotpath.chatrelay import EVENT_STREAM, ChatRelay
from guardproxy.hotpath.hooks import UpstreamTracer
from guardproxy.hotpath.observation import Observation, hand_over, observe, outcome_of
from guardproxy.hotpath.relay import NO_BODY_STATUS, reason_of, relay
from guardproxy.hotpath.replies import (
    JSON,
    ModelWire,
    ModelWires,
    ProxyCounts,
    annotated,
    breaker_open,
    error_body,
    header_name,
)
from guardproxy.hotpath.trust import Trust
from guardproxy.hotpath.upstream import Upstream, UpstreamError, client_message
from guardproxy.payloads.binary_bodies import HEADER_KEY, BinaryBodies, BinaryReads
from guardproxy.payloads.ndjson import NDJSON
from guardproxy.policy.table import CompiledModel
from guardproxy.transport import (
    ClientDisconnected,
    Request,
    RequestError,
    ResponseWriter,
    UpstreamResponse,
)

log = logging.getLogger("guardproxy.proxy")

JSON_TYPES = frozenset({b"application/json", NDJSON})
CHAT_STREAMS = frozenset({EVENT_STREAM, NDJSON})  # an openai model's, relayed as they come
Observer = Callable[[Observation], None]


# The largest server-sent event of a chat stream read: a token's delta is a few hundred
# bytes; each stream holds up to about twice this while an event arrives.
MAX_EVENT = 1 << 20


def answer_type(values: list[bytes]) -> bytes:
    """An answer's media type; Content-Type given twice, differing, reads as JSON: clients
    disagree on which one counts, and the guards must not take the one they skip."""
    if len(values) == 1:
        return media_type(values[0])
    types = {media_type(value) for value in values}
    return types.pop() if len(types) == 1 else b"application/json"


class GuardedSteps:
    """The steps of one guarded exchange; how it ended is returned as an access log outcome."""

    upstream: Upstream
    observers: tuple[Observer, ...]
    breakers: BreakerBoard
    fallbacks: Fallbacks
    tracer: UpstreamTracer
    trust: Trust
    max_body: int
    max_rows: int
    bodies: BodyBudget  # request body bytes held at once, across exchanges (--max-buffered)
    counts: ProxyCounts
    wires: ModelWires

    def read_body(self, request: Request, hold: BodyHold) -> Awaitable[tuple[bytes, bool]]:
        """A guarded request's body, decoded, its bytes held; True when it came encoded."""
        raise NotImplementedError

    async def _guarded(
        self,
        request: Request,
        writer: ResponseWriter,
        request_id: str,
        target: bytes,
        model: CompiledModel,
        path: str,
    ) -> str:
        """One guarded exchange; how it ended (an access log outcome)."""
        breaker = self.breakers.get(model)
        admission = breaker.admit()
        wire = self.wires.of(model)
        fallback = None
        if admission is Admission.OPEN and breaker.open_action != "flag":
            fallback = self.fallbacks.get(breaker)
            if fallback is None:
                self.breakers.rejected += 1
                breaker_open(writer, request_id, model, breaker, wire.headers)
                return "refused"
        call = BreakerCall(Admitted(breaker, admission, fallback is not None))
        hold = BodyHold(self.bodies)
        try:
            body, decoded = await self.read_body(request, hold)
            method = request.method.decode("latin-1")
            # Positional: a class's __init__ called with keywords gets them in a new dict.
            ex = Exchange(
                request_id, model.region, model.name, method, path, request.headers, body,
                perf_counter(),
            )  # fmt: skip
            if breaker.state is not CLOSED:
                mark(ex, breaker, admission, fallback is not None)
            chain = wire.chain
            binary = request.headers.get(HEADER_KEY)  # the binary tensor extension (OIP)
            if binary is not None and chain.binary is not None:
                ex.binary = binary_request(request, chain.binary, binary)
            try:
                await chain.on_request(ex)
            except RequestError:  # refused (too many rows, unreadable): counted all the same
                if ex.binary is not None:
                    self.counts.binary.count(ex.binary, False)
                raise
            if ex.reply is not None:
                await chain.observe(ex)
                self._reply(writer, ex, call.admitted, wire)
                return "blocked"
            # A request the guards could not read is the client's doing, not the model's health.
            call.counted = call.counted and not ex.errors
            try:
                upstream = fallback or self.upstream
                outcome = await self._ask(
                    request, writer, ex, target, call, upstream, wire, decoded, hold
                )
            except UpstreamError as exc:
                ex.status = exc.status
                ex.errors.append(client_message(exc))
                await chain.observe(ex)  # an errored exchange is sampled (to max_always)
                self._observe(ex, model, call.admitted)
                raise
            # The bodies stay in the budget until the client has read the answer: one that
            # does not read holds them in the transport's buffer until the write timeout.
            ex.forget_bodies()
            try:
                await writer.delivered()
            except ClientDisconnected:
                self.counts.client_gone += 1
            return outcome
        finally:
            call.release()  # a probe that never reached the upstream gives its slot back
            hold.release()  # however the exchange ended, its body leaves the budget

    async def _ask(
        self,
        request: Request,
        writer: ResponseWriter,
        ex: Exchange,
        target: bytes,
        call: BreakerCall,
        upstream: Upstream,
        wire: ModelWire,
        decoded: bool,
        hold: BodyHold,
    ) -> str:
        """The upstream's answer through the guards (binary tensors and chat streams too).

        Any other 2xx answer is read as JSON; a failed answer that is not JSON, and an event
        stream of a model that is not a chat model, stream through unguarded, and are counted.
        """
        rid = ex.request_id.encode("latin-1")
        headers = guarded_headers(request, rid, self.trust.forwarded, decoded)
        if upstream.authorization is not None:
            upstream.authorize(headers)
        span = self.tracer.upstream_call(request, headers)
        began = perf_counter()
        try:
            response = await upstream.pool.request(
                request.method, upstream.target(target), headers, ex.body, key=wire.pool_key
            )
        except UpstreamError as exc:
            span.end(exc.status, exc.kind)
            call.settle(None, perf_counter() - began)
            raise
        span.end(response.status)
        call.settle(response.status, perf_counter() - began)
        chain = wire.chain
        content_type = answer_type(response.headers.getall(b"content-type"))
        binary = response.headers.get(HEADER_KEY) if chain.binary is not None else None
        if response.status in NO_BODY_STATUS or request.method == b"HEAD":
            return await self._unguarded(request, writer, response, ex)
        if binary is not None:
            ex.binary = ex.binary or BinaryBodies(cast(BinaryReads, chain.binary))
            ex.binary.response = binary.decode("latin-1")
        elif content_type in CHAT_STREAMS and wire.model.spec.protocol == "openai":
            return await self._chat(writer, ex, response, call.admitted, wire, began, content_type)
        # Any other 2xx answer is guarded as JSON, whatever its type says: clients such as
        # the openai SDK parse text/plain or an untyped answer as JSON all the same.
        elif content_type not in JSON_TYPES and (
            content_type == EVENT_STREAM or not 200 <= response.status < 300
        ):
            return await self._unguarded(request, writer, response, ex)
        await read_answer(ex, response, self.max_body, content_type, hold)
        ex.upstream_seconds = perf_counter() - began
        if 200 <= ex.status < 300:
            await chain.check_response(ex)  # on_response's two steps, an await level less
        await chain.observe(ex)
        if ex.reply is not None:
            self._reply(writer, ex, call.admitted, wire)
            return "blocked"
        self._answer(writer, ex, call.admitted, wire, reason_of(response))
        return outcome_of(ex)

    async def _unguarded(
        self, request: Request, writer: ResponseWriter, response: UpstreamResponse, ex: Exchange
    ) -> str:
        """An answer the guards cannot read (not JSON, binary tensors or a chat stream)."""
        self.counts.unguarded_streams += 1
        if ex.binary is not None:  # a binary request, all the same
            self.counts.binary.count(ex.binary, False)
        await relay(request, writer, response, ex.request_id.encode("latin-1"), self.counts)
        return "streamed"

    async def _chat(
        self,
        writer: ResponseWriter,
        ex: Exchange,
        response: UpstreamResponse,
        admitted: Admitted,
        wire: ModelWire,
        began: float,
        content_type: bytes,
    ) -> str:
        """A streamed chat answer through the label terms, event by event (or line by line,
        Ollama's), then observed."""
        chain, spec = wire.chain, wire.model.spec
        ex.status, ex.streamed, ex.response_type = response.status, True, content_type
        ex.response_headers = stream_headers(response.headers)
        stream = ChatRelay(
            ex, chain, spec.labels, self.counts, min(self.max_body, MAX_EVENT),
            spec.sampling.max_body_bytes, self.max_rows, content_type == NDJSON,
        )  # fmt: skip
        if applied_codings(response.headers):  # asked for identity, encoded all the same
            stream.unreadable("a content-encoded stream cannot be read")
        if 200 <= ex.status < 300 and ex.reply is None:
            await chain.check_response(ex)  # a decision guard says: unscored
        if ex.reply is not None:  # fail_closed: nothing of the stream was sent
            response.release()
            stream.refused()
            await chain.observe(ex)
            self._reply(writer, ex, admitted, wire)
            return "blocked"
        headers = annotated(ex.response_headers, ex, wire.headers)
        try:
            await stream.run(writer, response, headers, reason_of(response))
        finally:
            ex.upstream_seconds = perf_counter() - began
            self.counts.blocked += ex.reply is not None
            await chain.observe(ex)
            self._observe(ex, wire.model, admitted)
        return outcome_of(ex)

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
            headers = changed_headers(headers, ex.binary)
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
        """Hand the observers the immutable record of the finished exchange."""
        if ex.binary is not None:
            self.counts.binary.count(ex.binary, ex.response_changed)
        hand_over(observe(ex, model, admitted), self.observers, self.counts.observer_errors)
