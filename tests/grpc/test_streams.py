"""ModelStreamInfer's pairing of answers with requests, and its bound on unanswered ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from grpc import aio

from guardproxy.grpc import GrpcProxy
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.payloads.tensors import pack

from .conftest import RecordingHook, Stack, eventually, stream_infer
from .upstream import Eager, start_eager


def request(value: float, request_id: str = "", pad: int = 0) -> pb.ModelInferRequest:
    """One row whose input `x` is [value]; `pad` bytes of an unread parameter make it larger."""
    msg = pb.ModelInferRequest(model_name="echo", id=request_id)
    msg.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    msg.raw_input_contents.append(pack("FP32", [value], "x"))
    if pad:
        msg.parameters["pad"].string_param = "p" * pad
    return msg


@asynccontextmanager
async def eager_stream(**limits: Any) -> AsyncIterator[tuple[Eager, RecordingHook, Any, GrpcProxy]]:
    """A stream open through a proxy to the eager model (whose gate is shut)."""
    server, model, port = await start_eager()
    hook = RecordingHook()
    proxy = GrpcProxy(f"127.0.0.1:{port}", hook, **limits)
    bound = await proxy.start("127.0.0.1", 0)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{bound}") as channel:
            stream = stream_infer(channel)
            yield model, hook, stream(), proxy
    finally:
        await proxy.stop(1.0)
        await server.stop(1.0)


async def test_requests_beyond_the_pending_bound_wait_and_keep_their_pairing() -> None:
    async with eager_stream(max_pending=3) as (model, hook, call, proxy):
        for i in range(10):
            await call.write(request(float(i)))
        await eventually(lambda: proxy.status()["calls"].get("stream_held") == 1)
        await eventually(lambda: model.received == 3)  # the rest wait in the proxy, then the client
        model.gate.set()
        answers = [await call.read() for _ in range(10)]
        await call.done_writing()
    assert [a.infer_response.outputs[0].name for a in answers] == ["x"] * 10
    assert [answer["outputs"][0]["data"] for _, answer in hook.answers] == [
        [float(i)] for i in range(10)
    ]
    assert [c.message.raw_input_contents[0] for c, _ in hook.answers] == [
        pack("FP32", [float(i)], "x") for i in range(10)
    ]
    assert hook.failures == [] and proxy.status()["errors"] == {}


async def test_requests_beyond_the_pending_bytes_wait() -> None:
    size = len(request(0.0, pad=100_000).SerializeToString())
    async with eager_stream(max_pending_bytes=3 * size) as (model, hook, call, proxy):
        for i in range(6):
            await call.write(request(float(i), pad=100_000))
        await eventually(lambda: proxy.status()["calls"].get("stream_held") == 1)
        await eventually(lambda: model.received == 3)
        model.gate.set()
        for _ in range(6):
            await call.read()
        await call.done_writing()
    assert len(hook.answers) == 6 and proxy.status()["errors"] == {}


async def test_a_request_larger_than_the_pending_bytes_still_goes_alone() -> None:
    async with eager_stream(max_pending_bytes=1000) as (model, hook, call, _):
        model.gate.set()
        await call.write(request(1.0, pad=5000))
        assert (await call.read()).infer_response.outputs[0].name == "x"
        await call.done_writing()
    assert len(hook.answers) == 1


async def test_a_reused_id_waits_for_the_answer_of_its_namesake() -> None:
    # Sent at once, the second answer could not be told from the first, and one would pass
    # without the guards.
    async with eager_stream() as (model, hook, call, proxy):
        await call.write(request(1.0, "same"))
        await call.write(request(2.0, "same"))
        await eventually(lambda: proxy.status()["calls"].get("stream_held") == 1)
        await eventually(lambda: model.received == 1)
        model.gate.set()
        answers = [await call.read() for _ in range(2)]
        await call.done_writing()
    assert [a.infer_response.id for a in answers] == ["same", "same"]
    assert [answer["outputs"][0]["data"] for _, answer in hook.answers] == [[1.0], [2.0]]
    assert [c.message.raw_input_contents[0] for c, _ in hook.answers] == [
        pack("FP32", [v], "x") for v in (1.0, 2.0)
    ]
    assert hook.failures == [] and proxy.status()["errors"] == {}


def one(model: str, value: float, request_id: str = "") -> pb.ModelInferRequest:
    """A one-row request of `model` (the test server's "broken" answers an in-band error)."""
    msg = request(value, request_id)
    msg.model_name = model
    return msg


async def test_an_in_band_error_answers_its_own_request(stack: Stack) -> None:
    async with aio.insecure_channel(stack.target) as channel:
        call = stream_infer(channel)()
        for msg in (one("broken", 0.0), one("echo", 1.0), one("echo", 2.0)):
            await call.write(msg)
        answers = [await call.read() for _ in range(3)]
        # Its id reused once the error came: it goes through, and pairs with its own answer.
        await call.write(one("broken", 3.0, "x"))
        await call.write(one("echo", 4.0, "x"))
        answers += [await call.read() for _ in range(2)]
        await call.done_writing()
    assert [a.error_message for a in answers] == ["model is broken", "", "", "model is broken", ""]
    assert [c.model_name for c, _ in stack.hook.failures] == ["broken", "broken"]
    assert [answer["outputs"][0]["data"] for _, answer in stack.hook.answers] == [
        [1.0],
        [2.0],
        [4.0],
    ]
    assert [c.message.raw_input_contents[0] for c, _ in stack.hook.answers] == [
        pack("FP32", [v], "x") for v in (1.0, 2.0, 4.0)
    ]
    assert stack.proxy.status()["errors"] == {}


def sent_values(pairs: Any) -> list[bytes]:
    """The raw input of each request the hook was shown with an answer or a failure."""
    return [call.message.raw_input_contents[0] for call, _ in pairs]


async def test_an_error_without_id_answers_the_oldest_request_without_one() -> None:
    # Triton repeats a request's id in its error: one without an id is a request's without
    # one, even while requests with ids wait. Left waiting, that request took the next
    # answer without an id: another request's.
    async with eager_stream() as (model, hook, call, proxy):
        for msg in (one("broken", 1.0), one("echo", 2.0, "x"), one("echo", 3.0)):
            await call.write(msg)
        await eventually(lambda: model.received == 3)
        model.gate.set()
        answers = [await call.read() for _ in range(3)]
        await call.done_writing()
    assert [a.error_message for a in answers] == ["model is broken", "", ""]
    assert sent_values(hook.failures) == [pack("FP32", [1.0], "x")]
    assert sent_values(hook.answers) == [pack("FP32", [v], "x") for v in (2.0, 3.0)]
    assert [answer["outputs"][0]["data"] for _, answer in hook.answers] == [[2.0], [3.0]]
    assert proxy.status()["errors"] == {}


async def test_requests_only_unnamed_errors_can_have_answered_stop_waiting() -> None:
    # Two requests with ids wait when an error naming neither comes: either may be its. Once
    # the other is answered, the one left is the error's: it no longer holds its id.
    async with eager_stream() as (model, hook, call, proxy):
        await call.write(one("broken", 1.0, "a"))
        await call.write(one("echo", 2.0, "b"))
        await eventually(lambda: model.received == 2)
        model.gate.set()
        first, second = await call.read(), await call.read()
        assert (first.error_message, second.infer_response.id) == ("model is broken", "b")
        await call.write(one("echo", 3.0, "a"))  # the same id, once its request is settled
        third = await asyncio.wait_for(call.read(), 5)
        await call.done_writing()
    assert third.infer_response.id == "a"
    assert sent_values(hook.failures) == [pack("FP32", [1.0], "x")]
    assert hook.failures[0][1].message == "the model answered an error: model is broken"
    assert sent_values(hook.answers) == [pack("FP32", [v], "x") for v in (2.0, 3.0)]
    assert proxy.status()["errors"] == {"stream_unpaired_error": 1}


async def test_unnamed_errors_do_not_hold_the_stream_at_its_pending_bound() -> None:
    # With every request waiting answered by an error naming none, nothing else would ever
    # answer them: they held the bound, and the stream, until it ended.
    async with eager_stream(max_pending=2) as (model, hook, call, proxy):
        await call.write(one("broken", 1.0, "a"))
        await call.write(one("broken", 2.0, "b"))
        await call.write(one("echo", 3.0, "c"))
        await call.write(one("echo", 4.0, "d"))
        await eventually(lambda: proxy.status()["calls"].get("stream_held") == 1)
        await eventually(lambda: model.received == 2)
        model.gate.set()
        answers = [await asyncio.wait_for(call.read(), 5) for _ in range(4)]
        await call.done_writing()
    assert [a.error_message for a in answers] == ["model is broken"] * 2 + [""] * 2
    assert sorted(sent_values(hook.failures)) == sorted(pack("FP32", [v], "x") for v in (1.0, 2.0))
    assert sent_values(hook.answers) == [pack("FP32", [v], "x") for v in (3.0, 4.0)]
    assert proxy.status()["errors"] == {"stream_unpaired_error": 2}


async def test_an_idle_stream_ends_unavailable() -> None:
    async with eager_stream(stream_idle=0.3) as (model, hook, call, proxy):
        model.gate.set()
        await call.write(request(1.0))
        assert (await call.read()).infer_response.outputs[0].name == "x"
        assert await call.code() == grpc.StatusCode.UNAVAILABLE  # nothing sent for 0.3 s
        assert "idle for 0.3 s" in await call.details()
    status = proxy.status()
    assert status["calls"]["stream_idle"] == 1
    assert status["refused"] == {} and status["errors"] == {}
    assert len(hook.answers) == 1 and hook.failures == []


async def test_a_request_waiting_for_its_answer_keeps_the_stream_open() -> None:
    async with eager_stream(stream_idle=0.2) as (model, hook, call, proxy):
        await call.write(request(1.0))
        await eventually(lambda: model.received == 1)
        await asyncio.sleep(0.6)  # the model is slow, the client is not idle
        model.gate.set()
        assert (await call.read()).infer_response.outputs[0].name == "x"
        await call.write(request(2.0))
        assert (await call.read()).infer_response.outputs[0].name == "x"
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    assert len(hook.answers) == 2 and proxy.status()["calls"].get("stream_idle") is None
