"""A relayed upstream call against the real model server: its status stays the upstream's."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

from guardproxy.grpc import INFER, STREAM_INFER
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.grpc.relay import Relay
from guardproxy.testing import eventually

from .conftest import Stack
from .test_proxy import one_row


async def requests_of(*messages: bytes) -> AsyncIterator[bytes]:
    for message in messages:
        yield message


async def ended(relay: Relay) -> tuple[grpc.StatusCode, str, str]:
    """How the relayed call ended: its code, details and x-trailer trailing metadata."""
    try:
        async for _ in relay.call:
            pass
    except aio.AioRpcError:
        pass  # the status is read below, as the relayed call reports it
    finally:
        relay.close()
    trailers = dict(await relay.call.trailing_metadata())
    return await relay.call.code(), await relay.call.details(), str(trailers.get("x-trailer", ""))


async def test_an_upstream_that_ends_the_call_while_requests_are_written_keeps_its_status(
    stack: Stack,
) -> None:
    outcomes: Counter[tuple[grpc.StatusCode, str, str]] = Counter()
    async with aio.insecure_channel(stack.direct) as channel:
        for _ in range(100):
            relay = Relay(channel, "/test.Echo/First", requests_of(*[b"x" * 100] * 8), (), None)
            outcomes[await ended(relay)] += 1
    assert outcomes == {(grpc.StatusCode.FAILED_PRECONDITION, "one request is enough", "t"): 100}


async def test_a_stream_is_relayed_both_ways_and_half_closed(stack: Stack) -> None:
    rows = [one_row().SerializeToString()] * 3
    async with aio.insecure_channel(stack.direct) as channel:
        relay = Relay(channel, STREAM_INFER, requests_of(*rows), (), 5.0)
        answers = [pb.ModelStreamInferResponse.FromString(raw) async for raw in relay.call]
        assert await relay.call.code() == grpc.StatusCode.OK  # it ends once the requests did
    assert [a.infer_response.model_name for a in answers] == ["echo"] * 3


async def test_metadata_and_deadline_go_upstream(stack: Stack) -> None:
    async with aio.insecure_channel(stack.direct) as channel:
        rows = requests_of(one_row().SerializeToString())
        relay = Relay(channel, INFER, rows, (("x-test", "1"),), 60.0)
        [answer] = [pb.ModelInferResponse.FromString(raw) async for raw in relay.call]
    assert answer.model_name == "echo"
    assert stack.model.metadata[-1]["x-test"] == "1"
    seen = stack.model.deadlines[-1]
    assert seen is not None and 0 < seen < 61  # a deadline, as timespecs round it


async def test_requests_that_break_off_cancel_the_upstream_call(stack: Stack) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield one_row("slow").SerializeToString()
        await eventually(lambda: len(stack.model.metadata) == 1)  # the upstream has it
        raise RuntimeError("the client's stream broke")

    async with aio.insecure_channel(stack.direct) as channel:
        relay = Relay(channel, INFER, broken(), (), None)
        await eventually(relay.call.cancelled)
    await eventually(lambda: stack.model.cancelled == 1)


async def test_close_stops_a_running_upstream_call(stack: Stack) -> None:
    async with aio.insecure_channel(stack.direct) as channel:
        relay = Relay(channel, INFER, requests_of(one_row("slow").SerializeToString()), (), None)
        await eventually(lambda: len(stack.model.metadata) == 1)
        relay.close()
        assert relay.call.cancelled()
    await eventually(lambda: stack.model.cancelled == 1)


class PassThrough(aio.StreamStreamClientInterceptor):
    """Leaves every call as it is; its calls have no core object to write through."""

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(client_call_details, request_iterator)


async def test_an_intercepted_call_is_relayed_through_its_writes(stack: Stack) -> None:
    rows = [one_row().SerializeToString()] * 2
    async with aio.insecure_channel(stack.direct, interceptors=[PassThrough()]) as channel:
        relay = Relay(channel, STREAM_INFER, requests_of(*rows), (), 5.0)
        assert not hasattr(relay.call, "_cython_call")
        answers = [raw async for raw in relay.call]
        assert await relay.call.code() == grpc.StatusCode.OK
    assert len(answers) == 2
