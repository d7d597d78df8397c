"""ModelStreamInfer through the hook: each request admitted, each answer paired and checked.

Answers are paired with their request by `id` when the request has one, else in order; a
decoupled model's answers (`triton_final_response: false`) all go to their request, each through
the hook, until its final one. In a stream that carried a guarded request, an answer that pairs
with no request waiting (a second answer to a request, an id the model made up) ends the stream
INTERNAL: it may be a guarded request's answer, and would pass unguarded.
Triton wraps each answer in a ModelStreamInferResponse (an `error_message` answer passes as it
is); MLServer sends bare ModelInferResponse messages. `stream_answers` says which (`auto`: each
answer is read as the one whose fields it has); an answer of neither form is no answer the
guards can read: while a guarded request waits, it ends the stream INTERNAL. A refusal
ends the whole stream with its status; `Allow.metadata` becomes string `parameters` of the
answer it belongs to. Every admitted request whose answer never came (the stream failed or
ended first) is reported to `hook.on_failure`.

An in-band error answer (Triton's `error_message`) answers the request its id names (Triton
repeats the request's id in it, as in every answer). Else it answers the oldest request without
an id when it has no id itself (a request with one would have had it repeated) or when only
requests without ids wait (an id the model made up); else the only request with an id
waiting. One that could answer any of several requests with ids is counted
(`stream_unpaired_error`) and leaves them waiting for their own answers: each of those waiting
when it came may be the one it answered. Once no more of them wait than such errors came, the
ones left can only be those the errors answered: they are taken as answered so (reported to
`hook.on_failure`) and stop holding the stream (its bound, their ids, its idle time).

A client's next request is held back, and with it the rest of its stream (grpc's flow control
then stops the client), while the stream has `max_pending` requests or `max_pending_bytes` of
them unanswered, and while an earlier request with the same id has no final answer: two
answers of one id could not be told apart, and one would pass unguarded.

A stream with no request waiting for an answer that neither sends a request nor receives an
answer for `stream_idle` seconds ends UNAVAILABLE: an idle stream holds its state, and gRPC's
connection settings (keepalive pings) keep it open as long as its client likes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from grpc import aio

from ..hotpath.bodies import BodyHold, BudgetFull
from .context import STREAM_INFER, cancelled, forwardable, upstream_metadata
from .documents import apply_response, response_document
from .generated import grpc_predict_v2_pb2 as pb
from .held import BUDGET_REFUSAL
from .hooks import Allow, Failure, InferCall, Refuse
from .relay import Relay

if TYPE_CHECKING:
    from .proxy import GrpcProxy

__all__ = ["StreamAnswers", "StreamGuard", "parse_answer"]

log = logging.getLogger("guardproxy.grpc")

# How the model server sends stream answers: Triton wraps them, MLServer does not.
StreamAnswers = Literal["auto", "triton", "mlserver"]
UNREADABLE = "the model's stream answer could not be read"
UNPAIRED = "the model's stream answer answers no request waiting"
IDLE = "the stream was idle for {:g} s (no request sent, none waiting for an answer)"


def parse_answer(raw: bytes, form: StreamAnswers) -> tuple[Any, pb.ModelInferResponse | None]:
    """A stream answer: the message to serialize back, and the answer in it (None: Triton's
    in-band error). ValueError when it is no answer of `form`.

    Either message parses from many bytes of the other (both begin with string fields), so an
    answer is taken for one only when it has no field that one lacks: a bare answer's
    outputs are unknown to a ModelStreamInferResponse.
    """
    if form != "mlserver":
        outer = _strictly(pb.ModelStreamInferResponse, raw)
        if outer is not None:
            if outer.error_message or not outer.HasField("infer_response"):
                return outer, None
            return outer, outer.infer_response
        if form == "triton":
            raise ValueError("not a ModelStreamInferResponse (see --grpc-stream-answers)")
    answer = _strictly(pb.ModelInferResponse, raw)
    if answer is None:
        raise ValueError(
            f"not a {'' if form == 'mlserver' else 'stream answer nor a '}"
            "ModelInferResponse (see --grpc-stream-answers)"
        )
    return answer, answer


def _strictly(kind: Any, raw: bytes) -> Any:
    """The message of type `kind` these bytes are, None when they do not parse or have fields
    it does not know."""
    try:
        msg = kind.FromString(raw)
    except DecodeError:
        return None
    return None if len(UnknownFieldSet(msg)) else msg


class _Sent(NamedTuple):
    """An admitted request waiting for its answer, its size on the wire and budget held."""

    call: InferCall
    size: int
    held: BodyHold | None = None


class StreamGuard:
    """One ModelStreamInfer call: requests in, answers out, both through the proxy's hook."""

    def __init__(self, proxy: GrpcProxy, context: aio.ServicerContext[bytes, bytes]) -> None:
        self.proxy = proxy
        self.context = context
        self.refusal: Refuse | None = None
        self._hook_refused = False  # whether the refusal is the hook's (else the proxy's own)
        self._by_id: dict[str, _Sent] = {}
        self._in_order: deque[_Sent] = deque()
        self._bytes = 0  # of the requests waiting for an answer
        # Ids of requests waiting that an in-band error naming none of them may have answered,
        # and how many such errors (with their messages) are owed to them.
        self._suspects: set[str] = set()
        self._owed: list[str] = []
        self._room = asyncio.Event()  # set when an answer came (or the stream ended)
        self._guarded = False  # whether a guarded request went upstream on this stream
        self._active = asyncio.get_running_loop().time()  # the last request or answer

    async def run(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Forward the stream; yields the answers to send to the client."""
        proxy, context = self.proxy, self.context
        relay = Relay(
            proxy.channel, STREAM_INFER, self._admitted(requests),
            upstream_metadata(context, proxy.calls), context.time_remaining(),
        )  # fmt: skip
        rpc = relay.call
        ended = Failure(grpc.StatusCode.CANCELLED, "the stream ended before the answer")
        try:
            await context.send_initial_metadata(forwardable(await rpc.initial_metadata()))
            async for answer in rpc:
                if self.refusal is not None:
                    break
                yield await self._checked(answer)
            if self.refusal is not None:
                await proxy.refuse(self.refusal, context, hook=self._hook_refused)
            context.set_trailing_metadata(forwardable(await rpc.trailing_metadata()))
        except aio.AioRpcError as err:
            ended = Failure(err.code(), err.details() or "")
            relay.close()  # stops reading the client's requests before its status is sent
            await proxy.fail_upstream(err, context)
        except asyncio.CancelledError:
            ended = Failure(*cancelled(context))
            raise
        finally:
            relay.close()
            await self._unanswered(ended)

    async def _unanswered(self, failure: Failure) -> None:
        """Tell the hook about every admitted request whose answer never came."""
        waiting = (*self._by_id.values(), *self._in_order)
        calls = [self._answered(sent) for sent in waiting]
        self._by_id.clear()
        self._in_order.clear()
        self._suspects.clear()
        self._owed.clear()
        self._bytes = 0
        self._room.set()
        for call in calls:
            await self.proxy.failed(call, failure.code, failure.message)

    async def _admitted(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The client's requests that the hook admits; the first refusal ends the stream."""
        async for raw in self._until_idle(requests):
            self.proxy.stats.calls["stream_message"] += 1
            if not self.proxy.room_for(len(raw)):
                self.refusal = BUDGET_REFUSAL
                return
            call = self.proxy.decode_call("ModelStreamInfer", raw, self.context)
            if call is not None:
                await self._room_for(call, len(raw))
                try:
                    held = self.proxy.hold_message(call, len(raw))
                except BudgetFull:
                    self.refusal = BUDGET_REFUSAL
                    return
                refusal = await self._admit(call)
                if refusal is not None:
                    if held is not None:
                        held.release()
                    self.refusal = refusal  # half-close upstream; run() ends the call
                    self._hook_refused = True
                    return
                self._remember(_Sent(call, len(raw), held))
                self._guarded = self._guarded or self.proxy.hook.reads_answer(call)
            yield raw

    async def _until_idle(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The client's requests, until the stream is idle for `stream_idle` seconds."""
        idle = self.proxy.stream_idle
        if idle is None:
            async for raw in requests:
                yield raw
            return
        loop = asyncio.get_running_loop()
        requests = aiter(requests)
        while (message := await self._next(requests, idle, loop)) is not None:
            self._active = loop.time()
            yield message

    async def _next(
        self, requests: AsyncIterator[bytes], idle: float, loop: asyncio.AbstractEventLoop
    ) -> bytes | None:
        """The client's next request; None when it ended the stream, or left it idle (refused)."""
        # The read is a task of its own, waited on in turns: a timeout that cancelled a read
        # grpc has begun would end the stream while a request still waits for its answer.
        read = asyncio.ensure_future(anext(requests))
        try:
            while not (await asyncio.wait((read,), timeout=self._idle_left(idle, loop)))[0]:
                if self._idle_left(idle, loop) <= 0:
                    self.proxy.stats.calls["stream_idle"] += 1
                    self.refusal = Refuse(grpc.StatusCode.UNAVAILABLE, IDLE.format(idle))
                    return None
            return read.result()
        except StopAsyncIteration:
            return None
        finally:
            read.cancel()  # done already, or the stream ends: no read outlives it

    def _idle_left(self, idle: float, loop: asyncio.AbstractEventLoop) -> float:
        """Seconds before the stream counts as idle; a request waiting for an answer holds it."""
        if self._by_id or self._in_order:
            return idle
        return self._active + idle - loop.time()

    async def _room_for(self, call: InferCall, size: int) -> None:
        """Wait until this request may go upstream (see the module's docstring)."""
        request_id = call.request.get("id")
        if not self._held(request_id, size):
            return
        self.proxy.stats.calls["stream_held"] += 1
        while self._held(request_id, size):
            self._room.clear()
            await self._room.wait()

    def _held(self, request_id: str | None, size: int) -> bool:
        if request_id and request_id in self._by_id:
            return True
        waiting = len(self._by_id) + len(self._in_order)
        proxy = self.proxy
        return waiting > 0 and (
            waiting >= proxy.max_pending or self._bytes + size > proxy.max_pending_bytes
        )

    async def _admit(self, call: InferCall) -> Refuse | None:
        try:
            return await self.proxy.hook.on_request(call)
        except Exception:
            self.proxy.stats.errors["hook"] += 1
            return self.proxy._failed("the guard could not check the request")

    def _remember(self, sent: _Sent) -> None:
        request_id = sent.call.request.get("id")
        if request_id:
            self._by_id[request_id] = sent
        else:
            self._in_order.append(sent)
        self._bytes += sent.size

    def _paired(self, answer: pb.ModelInferResponse) -> tuple[InferCall, bool] | None:
        """The request an answer answers, and whether it is its last answer; None: none waits.

        An id no request waits with pairs in order: MLServer gives a request without one its
        own (the answer is guarded all the same, as the request's model says).
        """
        flag = answer.parameters.get("triton_final_response")
        final = flag is None or flag.bool_param
        if answer.id and answer.id in self._by_id:
            if not final:
                return self._by_id[answer.id].call, False
            return self._answered(self._pop(answer.id)), True
        if not self._in_order:
            return None
        if not final:
            return self._in_order[0].call, False
        return self._answered(self._in_order.popleft()), True

    def _forget(self, call: InferCall) -> None:
        """Stop waiting for a request's answers (its later ones are then unpaired)."""
        for key, sent in list(self._by_id.items()):
            if sent.call is call:
                self._answered(self._pop(key))
        for sent in [s for s in self._in_order if s.call is call]:
            self._in_order.remove(sent)
            self._answered(sent)

    def _errored(self, outer: Any, message: str) -> InferCall | None:
        """The request an in-band error answers (see the module's docstring); None, counted,
        when it may answer any of several requests with ids, or none waits."""
        request_id = outer.infer_response.id if outer.HasField("infer_response") else ""
        by_id = self._by_id
        if request_id in by_id:
            return self._answered(self._pop(request_id))
        if self._in_order and (not request_id or not by_id):
            # No id: a request without one. An id no request has while only requests
            # without one wait: one the model made up for it, as answers' ids are.
            return self._answered(self._in_order.popleft())
        if len(by_id) == 1:  # no id, or one no request has: the one request with an id
            return self._answered(self._pop(next(iter(by_id))))
        self.proxy.stats.errors["stream_unpaired_error"] += 1
        if by_id:
            self._suspects.update(by_id)
            self._owed.append(message)
        return None

    def _pop(self, request_id: str) -> _Sent:
        """The request waiting with this id, no longer waiting (nor suspect)."""
        self._suspects.discard(request_id)
        return self._by_id.pop(request_id)

    def _settled(self) -> list[tuple[InferCall, str]]:
        """Requests that can only be those that errors naming none of them answered: once no
        more suspects wait than such errors came, each is one of them (with a message)."""
        owed = self._owed
        if not owed or len(self._suspects) > len(owed):
            return []
        if len(set(owed)) == 1:
            message = owed[0]
        else:
            message = f"the model answered {len(owed)} errors that named no request"
        keys = [key for key in self._by_id if key in self._suspects]  # in the order sent
        settled = [(self._answered(self._pop(key)), message) for key in keys]
        self._suspects.clear()
        owed.clear()
        return settled

    def _answered(self, sent: _Sent) -> InferCall:
        self._active = asyncio.get_running_loop().time()
        if sent.held is not None:
            sent.held.release()
        self._bytes -= sent.size
        self._room.set()
        return sent.call

    async def _checked(self, raw: bytes) -> bytes:
        """The answer to send (see `_answer`); requests it leaves only errors can have
        answered are answered so."""
        checked = await self._answer(raw)
        if self._owed:
            for call, message in self._settled():
                await self.proxy.failed(call, grpc.StatusCode.UNKNOWN, message)
        return checked

    async def _answer(self, raw: bytes) -> bytes:
        """The answer to send: as it came, or with the hook's metadata and changes."""
        proxy = self.proxy
        try:
            outer, answer = parse_answer(raw, proxy.stream_answers)
        except ValueError as exc:
            return await self._unreadable(raw, exc)
        if answer is None:  # Triton reporting one request's error in-band
            message = f"the model answered an error: {outer.error_message}"
            await proxy.failed(self._errored(outer, message), grpc.StatusCode.UNKNOWN, message)
            return raw
        paired = self._paired(answer)
        if paired is None:
            return await self._unpaired(raw)
        call, final = paired
        try:
            document = response_document(answer) if proxy.hook.reads_answer(call) else {}
        except Exception as exc:
            self._forget(call)  # the hook is told now: no later answer may pass as its
            await proxy.failed(call, grpc.StatusCode.OK, f"undecodable answer: {exc}")
            verdict: Allow | Refuse = proxy._answer_failed(exc)
            if isinstance(verdict, Allow):
                return raw
            await proxy.refuse(verdict, self.context)
        try:
            verdict = await proxy.hook.on_response(call, document, final)
            if isinstance(verdict, Allow):
                return self._annotated(raw, outer, answer, verdict)
        except Exception as exc:
            verdict = proxy._answer_failed(exc)
            if isinstance(verdict, Allow):
                return raw
        await proxy.refuse(verdict, self.context)

    async def _unpaired(self, raw: bytes) -> bytes:
        """An answer no waiting request can take: passed (counted) on a stream that never
        carried a guarded request, else the end of the stream."""
        proxy = self.proxy
        proxy.stats.errors["stream_unpaired"] += 1
        if not self._guarded:
            return raw
        await proxy.refuse(Refuse(grpc.StatusCode.INTERNAL, UNPAIRED), self.context, hook=False)

    async def _unreadable(self, raw: bytes, exc: ValueError) -> bytes:
        """An answer of no form the proxy reads: passed while only unguarded requests wait,
        else the end of the stream (it may answer a guarded request: which, none can tell)."""
        proxy = self.proxy
        proxy.stats.errors["stream_unreadable"] += 1
        log.debug("cannot read a stream answer: %s", exc)
        waiting = (*self._by_id.values(), *self._in_order)
        if not any(proxy.hook.reads_answer(sent.call) for sent in waiting):
            return raw
        await proxy.refuse(Refuse(grpc.StatusCode.INTERNAL, UNREADABLE), self.context, hook=False)

    def _annotated(
        self, raw: bytes, outer: Any, answer: pb.ModelInferResponse, verdict: Allow
    ) -> bytes:
        if verdict.response is None and not verdict.metadata:
            return raw
        if verdict.response is not None:
            apply_response(answer, verdict.response)
        for key, value in verdict.metadata:
            answer.parameters[key].string_param = value
        return outer.SerializeToString()  # type: ignore[no-any-return]
