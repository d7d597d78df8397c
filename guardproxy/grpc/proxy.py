"""An Open Inference Protocol gRPC proxy: ModelInfer guarded, every other method forwarded.

A generic handler takes every method. ModelInfer and ModelStreamInfer are decoded into OIP
documents for the `InferHook` (see hooks.py for the refusal mapping); any other method, even
one of a service unknown here, is forwarded to the upstream as raw bytes unless the hook
refuses it, as a stream both ways, which carries unary and streaming calls alike. Client
metadata (`traceparent` included) and the deadline go upstream (a unary ModelInfer's capped
by `timeout`); the upstream's status, details, initial and trailing metadata come back. An
answer or hook that fails follows `fail_closed`: pass untouched and count (default), or end
the call INTERNAL. With a `limiter`, each unary inference call first takes an upstream slot
for its model (slots.py): no slot in time is RESOURCE_EXHAUSTED. With a `budget`, each parsed
inference request counts against it while it lasts (held.py): one that does not fit is
RESOURCE_EXHAUSTED too. Every outcome is counted in `status()`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from grpc import aio

from ..hotpath.bodies import BodyBudget, BodyHold, BudgetFull
from ..transport.limiter import KeyLimiter
from .calllog import CallLog
from .context import INFER, STREAM_INFER, cancelled, ended, forwardable, upstream_metadata
from .documents import apply_response, request_header, response_document
from .generated import grpc_predict_v2_pb2 as pb
from .held import BUDGET_REFUSAL, held_bytes, hold, room_for
from .hooks import (
    Allow,
    AllowAll,
    Failure,
    InferCall,
    InferHook,
    Metadata,
    Refuse,
    refusal_trailers,
)
from .relay import Relay
from .slots import CallSlots, SlotKey
from .stats import GrpcStats
from .streams import StreamAnswers, StreamGuard

__all__ = ["INFER", "STREAM_INFER", "GrpcProxy"]

log = logging.getLogger("guardproxy.grpc")

# How soon the upstream channel tries again after a failed connection. gRPC's default backoff
# grows to 120 s: once the model was down a while, every call failed UNAVAILABLE for up to
# two minutes after it came back, while /readyz (a plain TCP connect) said ready.
RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def _untrace(exc: BaseException) -> None:
    """Drop the frames an abort was raised through (re-raised, it keeps only the outer ones).

    grpc keeps a call's abort in a reference cycle, and the abort's traceback keeps each frame
    it left with its locals: a parsed request (up to 16 times its bytes) lived on after its
    call was refused, until the collector's next full pass.
    """
    if isinstance(exc, aio.AbortError):
        exc.with_traceback(None)


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: GrpcProxy) -> None:
        self._proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = details.method
        proxy = self._proxy
        if method == INFER:
            return grpc.unary_unary_rpc_method_handler(proxy.infer)
        inner = (
            proxy.stream_infer
            if method == STREAM_INFER
            else functools.partial(proxy.forward, method)
        )
        return grpc.stream_stream_rpc_method_handler(functools.partial(proxy.logged, method, inner))


class GrpcProxy:
    """A grpc.aio server in front of one upstream channel."""

    def __init__(
        self,
        upstream: str,
        hook: InferHook | None = None,
        *,
        max_message: int = 16 << 20,
        stream_answers: StreamAnswers = "auto",
        fail_closed: bool = False,
        max_pending: int = 1024,
        max_pending_bytes: int = 64 << 20,
        stream_idle: float | None = 300.0,
        timeout: float | None = None,
        calls: CallLog | None = None,
        limiter: KeyLimiter | None = None,
        slot_key: SlotKey | None = None,
        max_calls: int | None = None,
        budget: BodyBudget | None = None,
    ) -> None:
        self.upstream = upstream
        self.calls = calls or CallLog()  # each call's access log line and span
        self.timeout = timeout  # longest unary upstream call, whatever the client's deadline
        self.hook: InferHook = hook or AllowAll()
        self.fail_closed = fail_closed
        self.stream_answers = stream_answers  # Triton wraps stream answers; MLServer does not
        self.max_pending = max_pending  # unanswered requests of one stream, at most
        self.max_pending_bytes = max_pending_bytes  # and their bytes (one may be larger)
        self.stream_idle = stream_idle  # seconds a stream may idle (None: for good)
        self.stats = GrpcStats()
        self.slots = CallSlots(limiter, slot_key, self.stats)  # upstream slots per model
        # Calls of any method at once; more are refused RESOURCE_EXHAUSTED by grpc before
        # their request is read (the slots can only refuse a call whose request has come).
        self.max_calls = max_calls
        # Parsed requests count against the body budget while their call (or answer) lasts.
        self.budget = budget
        self.port: int | None = None
        self._options = [
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
        ]
        self._server: aio.Server | None = None
        self._channel: aio.Channel | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); the port bound."""
        self._channel = aio.insecure_channel(self.upstream, options=[*self._options, *RECONNECT])
        server = aio.server(
            options=[*self._options, ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=self.max_calls,
        )
        server.add_generic_rpc_handlers((_Handler(self),))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        return self.port

    async def stop(self, grace: float | None) -> None:
        """Stop accepting calls, let running ones finish within `grace` seconds, close."""
        if self._server is not None:
            await self._server.stop(grace)
        if self._channel is not None:
            await self._channel.close()
        self._server = self._channel = None

    def status(self) -> dict[str, Any]:
        """Counters and settings for /status."""
        return {
            "upstream": self.upstream,
            "port": self.port,
            **self.stats.snapshot(),
            "slots": self.slots.status(),
        }

    @property
    def channel(self) -> aio.Channel:
        """The upstream channel (RuntimeError before start)."""
        if self._channel is None:
            raise RuntimeError("the gRPC proxy is not started")
        return self._channel

    async def infer(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        """ModelInfer: one access log line and span around `_infer`."""
        record = self.calls.begin(INFER, tuple(context.invocation_metadata() or ()))
        code = grpc.StatusCode.UNKNOWN
        try:
            answer = await self._infer(request, context)
            record.sent, code = len(answer), grpc.StatusCode.OK
            return answer
        except BaseException as exc:
            code = ended(context, exc)
            _untrace(exc)
            raise
        finally:
            self.calls.end(record, code)

    async def logged(
        self,
        method: str,
        handler: Callable[
            [AsyncIterator[bytes], aio.ServicerContext[bytes, bytes]], AsyncIterator[bytes]
        ],
        requests: AsyncIterator[bytes],
        context: aio.ServicerContext[bytes, bytes],
    ) -> AsyncIterator[bytes]:
        """A streaming call: one access log line and span around its handler."""
        record = self.calls.begin(method, tuple(context.invocation_metadata() or ()))
        code = grpc.StatusCode.UNKNOWN
        try:
            async for answer in handler(requests, context):
                record.sent += len(answer)
                yield answer
            code = grpc.StatusCode.OK
        except BaseException as exc:
            code = ended(context, exc)
            _untrace(exc)
            raise
        finally:
            self.calls.end(record, code)

    async def _infer(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        """ModelInfer: a slot, hook before, forward, hook after (or told how the call failed)."""
        self.stats.calls["infer"] += 1
        self.stats.active += 1
        call: InferCall | None = None
        told = True  # whether the hook has heard how the call it admitted ended
        held: str | None = None  # the key of the slot the call holds
        memory: BodyHold | None = None  # what its parsed request holds of the body budget
        try:
            key = self.slots.key_of(request, tuple(context.invocation_metadata() or ()))
            busy = await self.slots.take(key)
            if busy is not None:
                await self.refuse(busy, context, hook=False)
            held = key
            if not self.room_for(len(request)):
                await self.refuse(BUDGET_REFUSAL, context, hook=False)
            call = self.decode_call("ModelInfer", request, context)
            memory = await self.held(call, len(request), context)
            if call is not None:
                await self.admit(call, context)
                told = False
            unary: aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(INFER)
            request_id = self.hook.request_id(call) if call is not None else None
            metadata = upstream_metadata(context, self.calls, request_id)
            rpc = unary(request, metadata=metadata, timeout=self.deadline(context))
            try:
                answer: bytes = await rpc
            except aio.AioRpcError as err:
                told = True
                failed = await self.failed(call, err.code(), err.details() or "")
                await self.fail_upstream(err, context, failed)
            told = True
            added: Metadata = ()
            if call is not None:
                answer, added = await self.check(call, answer, context)
            await context.send_initial_metadata(
                (*forwardable(await rpc.initial_metadata()), *added)
            )
            context.set_trailing_metadata(forwardable(await rpc.trailing_metadata()))
            self.stats.status(grpc.StatusCode.OK)
            return answer
        except asyncio.CancelledError:
            if not told:
                await self.failed(call, *cancelled(context))
            raise
        finally:
            if held is not None:
                self.slots.release(held)
            if memory is not None:
                memory.release()
            self.stats.active -= 1

    async def stream_infer(
        self, requests: AsyncIterator[bytes], context: aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        """ModelStreamInfer: each request and each answer message through the hook."""
        self.stats.calls["stream"] += 1
        self.stats.active += 1
        try:
            guard = StreamGuard(self, context)
            async for answer in guard.run(requests):
                yield answer
        finally:
            self.stats.active -= 1

    async def forward(
        self,
        method: str,
        requests: AsyncIterator[bytes],
        context: aio.ServicerContext[bytes, bytes],
    ) -> AsyncIterator[bytes]:
        """Any other method: bytes both ways, metadata, deadline and status passed through
        (unless the hook refuses the method)."""
        self.stats.calls["forward"] += 1
        refusal = self.hook.refuses(method, tuple(context.invocation_metadata() or ()))
        if refusal is not None:
            await self.refuse(refusal, context)
        self.stats.active += 1
        relay = Relay(
            self.channel, method, requests, upstream_metadata(context, self.calls),
            context.time_remaining(),
        )  # fmt: skip
        rpc = relay.call
        try:
            await context.send_initial_metadata(forwardable(await rpc.initial_metadata()))
            async for answer in rpc:
                yield answer
            context.set_trailing_metadata(forwardable(await rpc.trailing_metadata()))
            self.stats.status(grpc.StatusCode.OK)
        except aio.AioRpcError as err:
            relay.close()  # stops reading the client's requests before its status is sent
            await self.fail_upstream(err, context)
        finally:
            relay.close()  # stops the upstream call too when the client went away
            self.stats.active -= 1

    def decode_call(
        self, method: str, request: bytes, context: aio.ServicerContext[bytes, bytes]
    ) -> InferCall | None:
        """The request as an InferCall; None (counted) when it is not a request message.

        Only the message's header is read here: its tensors are decoded by the hook, for a
        guarded model, and then only those its policy reads (a large tensor holds the loop).
        """
        try:
            msg = pb.ModelInferRequest.FromString(request)
        except Exception as exc:  # the upstream cannot parse it either, and will say so
            self.stats.errors["decode_request"] += 1
            log.debug("cannot decode a %s request: %s", method, exc)
            return None
        metadata = tuple(context.invocation_metadata() or ())
        return InferCall(
            method, msg.model_name, msg.model_version, request_header(msg), metadata,
            context.peer(), msg,
        )  # fmt: skip

    async def held(
        self, call: InferCall | None, wire: int, context: aio.ServicerContext[bytes, bytes]
    ) -> BodyHold | None:
        """What a parsed request holds of the body budget until released; the call is
        refused RESOURCE_EXHAUSTED (counted in `busy`) when it does not fit."""
        try:
            return self.hold_message(call, wire)
        except BudgetFull:
            pass  # refused outside the handler: chained to it, the parse lived on in a cycle
        await self.refuse(BUDGET_REFUSAL, context, hook=False)

    def room_for(self, wire: int) -> bool:
        """Whether a request of `wire` bytes may be parsed now (not: counted in `busy`)."""
        if room_for(self.budget, wire):
            return True
        assert self.budget is not None
        self.budget.refused += 1
        self.stats.busy["request_bodies"] += 1
        return False

    def hold_message(self, call: InferCall | None, wire: int) -> BodyHold | None:
        """The budget's hold for one parsed request message; BudgetFull (counted) if full."""
        if call is None or call.message is None:
            return None
        try:
            return hold(self.budget, held_bytes(call.message, wire))
        except BudgetFull:
            self.stats.busy["request_bodies"] += 1
            raise

    async def admit(self, call: InferCall, context: aio.ServicerContext[bytes, bytes]) -> None:
        """Run the request hook; abort the call on a refusal (or a failure, fail-closed)."""
        try:
            refusal = await self.hook.on_request(call)
        except Exception:
            self.stats.errors["hook"] += 1
            log.exception("the gRPC request hook failed")
            refusal = self._failed("the guard could not check the request")
        if refusal is not None:
            await self.refuse(refusal, context)

    async def check(
        self, call: InferCall, answer: bytes, context: aio.ServicerContext[bytes, bytes]
    ) -> tuple[bytes, Metadata]:
        """Run the answer hook: the (maybe changed) answer and the metadata to add.

        An answer the hook does not read (an unguarded model's) is not decoded at all.
        """
        msg, document = None, {}
        try:
            if self.hook.reads_answer(call):
                msg = pb.ModelInferResponse.FromString(answer)
                document = response_document(msg)
        except Exception as exc:
            added = await self.failed(call, grpc.StatusCode.OK, f"undecodable answer: {exc}")
            verdict = self._answer_failed(exc)
            if isinstance(verdict, Refuse):
                await self.refuse(verdict, context)
            return answer, added
        try:
            verdict = await self.hook.on_response(call, document)
            if isinstance(verdict, Allow) and verdict.response is not None and msg is not None:
                apply_response(msg, verdict.response)
                answer = msg.SerializeToString()
        except Exception as exc:
            verdict = self._answer_failed(exc)
        if isinstance(verdict, Refuse):
            await self.refuse(verdict, context)
        return answer, verdict.metadata

    async def failed(self, call: InferCall | None, code: grpc.StatusCode, message: str) -> Metadata:
        """Tell the hook how an admitted call ended without an answer; the metadata it adds."""
        if call is None:
            return ()
        try:
            return tuple(await self.hook.on_failure(call, Failure(code, message)))
        except Exception:
            self.stats.errors["hook"] += 1
            log.exception("the gRPC failure hook failed")
            return ()

    def deadline(self, context: aio.ServicerContext[bytes, bytes]) -> float | None:
        """Seconds the upstream call may take: the client's deadline, capped by `timeout`."""
        remaining = context.time_remaining()
        if self.timeout is None:
            return remaining
        return self.timeout if remaining is None else min(remaining, self.timeout)

    def _answer_failed(self, exc: Exception) -> Allow | Refuse:
        self.stats.errors["answer"] += 1
        log.debug("cannot check a gRPC answer: %s", exc)
        return self._failed("the guard could not check the answer") or Allow()

    def _failed(self, message: str) -> Refuse | None:
        return Refuse(grpc.StatusCode.INTERNAL, message) if self.fail_closed else None

    async def refuse(
        self, refusal: Refuse, context: aio.ServicerContext[bytes, bytes], *, hook: bool = True
    ) -> NoReturn:
        """End the call with the refusal's status (raises, as context.abort does).

        A refusal of the hook's is counted in `refused`; the proxy's own (`hook=False`: no
        slot, an unreadable stream answer) where it was decided.
        """
        self.calls.refused()
        if hook:
            self.stats.refused[refusal.code.name] += 1
        self.stats.status(refusal.code)
        await context.abort(refusal.code, refusal.message, refusal_trailers(refusal))

    async def fail_upstream(
        self,
        err: aio.AioRpcError,
        context: aio.ServicerContext[bytes, bytes],
        added: Metadata = (),
    ) -> NoReturn:
        """Pass the upstream's failure to the client: status, details, trailing metadata."""
        code = err.code()
        self.stats.upstream[code.name] += 1
        self.stats.status(code)
        trailers = (*forwardable(err.trailing_metadata(), details=True), *added)
        await context.abort(code, err.details() or "", trailers)
