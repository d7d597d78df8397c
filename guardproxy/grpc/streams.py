"""ModelStreamInfer through the hook: each request admitted, each answer paired and checked.

Answers are paired with their request by `id` when the request has one (a decoupled model's
answers stay paired until one says `triton_final_response: false` no more), else in order.
Triton wraps each answer in a ModelStreamInferResponse (an `error_message` answer passes as it
is); MLServer sends bare ModelInferResponse messages (`stream_answers="mlserver"`). A refusal
ends the whole stream with its status; `Allow.metadata` becomes string `parameters` of the
answer it belongs to. Every admitted request whose answer never came (the stream failed or
ended first, too many were pending, its id was reused) is reported to `hook.on_failure`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from .context import STREAM_INFER, cancelled, forwardable, upstream_metadata
from .documents import apply_response, response_document
from .generated import grpc_predict_v2_pb2 as pb
from .hooks import Allow, Failure, InferCall, Refuse
from .relay import Relay

if TYPE_CHECKING:
    from .proxy import GrpcProxy

__all__ = ["StreamGuard"]


class StreamGuard:
    """One ModelStreamInfer call: requests in, answers out, both through the proxy's hook."""

    def __init__(self, proxy: GrpcProxy, context: aio.ServicerContext[bytes, bytes]) -> None:
        self.proxy = proxy
        self.context = context
        self.refusal: Refuse | None = None
        self._by_id: dict[str, InferCall] = {}
        self._in_order: deque[InferCall] = deque()

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
                await proxy.refuse(self.refusal, context)
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
        calls = [*self._by_id.values(), *self._in_order]
        self._by_id.clear()
        self._in_order.clear()
        for call in calls:
            await self.proxy.failed(call, failure.code, failure.message)

    async def _admitted(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The client's requests that the hook admits; the first refusal ends the stream."""
        async for raw in requests:
            self.proxy.stats.calls["stream_message"] += 1
            call = self.proxy.decode_call("ModelStreamInfer", raw, self.context)
            if call is not None:
                refusal = await self._admit(call)
                if refusal is not None:
                    self.refusal = refusal  # half-close upstream; run() ends the call
                    return
                await self._remember(call)
            yield raw

    async def _admit(self, call: InferCall) -> Refuse | None:
        try:
            return await self.proxy.hook.on_request(call)
        except Exception:
            self.proxy.stats.errors["hook"] += 1
            return self.proxy._failed("the guard could not check the request")

    async def _remember(self, call: InferCall) -> None:
        request_id = call.request.get("id")
        lost: list[InferCall] = []  # their answers can no longer be paired with them
        if request_id:
            if request_id in self._by_id:
                lost.append(self._by_id.pop(request_id))
            self._by_id[request_id] = call
        else:
            self._in_order.append(call)
        if len(self._by_id) + len(self._in_order) > self.proxy.max_pending:
            self.proxy.stats.errors["stream_pending_dropped"] += 1
            if self._in_order:
                lost.append(self._in_order.popleft())
            else:
                lost.append(self._by_id.pop(next(iter(self._by_id))))
        for old in lost:
            await self.proxy.failed(old, grpc.StatusCode.CANCELLED, "no longer paired")

    def _paired(self, answer: pb.ModelInferResponse) -> InferCall | None:
        if answer.id and answer.id in self._by_id:
            final = answer.parameters.get("triton_final_response")
            if final is None or final.bool_param:
                return self._by_id.pop(answer.id)
            return self._by_id[answer.id]
        return self._in_order.popleft() if self._in_order else None

    async def _checked(self, raw: bytes) -> bytes:
        """The answer to send: as it came, or with the hook's metadata and changes."""
        proxy = self.proxy
        call: InferCall | None = None
        try:
            outer, answer = self._parse(raw)
            if answer is None:
                return raw  # Triton reporting one request's error in-band
            call = self._paired(answer)
            if call is None:
                proxy.stats.errors["stream_unpaired"] += 1
                return raw
            document = response_document(answer) if proxy.hook.reads_answer(call) else {}
        except Exception as exc:
            await proxy.failed(call, grpc.StatusCode.OK, f"undecodable answer: {exc}")
            verdict: Allow | Refuse = proxy._answer_failed(exc)
            if isinstance(verdict, Allow):
                return raw
            await proxy.refuse(verdict, self.context)
        try:
            verdict = await proxy.hook.on_response(call, document)
            if isinstance(verdict, Allow):
                return self._annotated(raw, outer, answer, verdict)
        except Exception as exc:
            verdict = proxy._answer_failed(exc)
            if isinstance(verdict, Allow):
                return raw
        await proxy.refuse(verdict, self.context)

    def _parse(self, raw: bytes) -> tuple[Any, pb.ModelInferResponse | None]:
        if self.proxy.stream_answers == "mlserver":
            answer = pb.ModelInferResponse.FromString(raw)
            return answer, answer
        outer = pb.ModelStreamInferResponse.FromString(raw)
        if outer.error_message or not outer.HasField("infer_response"):
            return outer, None
        return outer, outer.infer_response

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
