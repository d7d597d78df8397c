"""Upstream slots per model: a real proxy with a small limit in front of a real model server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from grpc import aio

from guardproxy.grpc import INFER, GrpcProxy, Refuse
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.grpc.hooks import Metadata
from guardproxy.grpc.slots import UNGUARDED, request_target
from guardproxy.transport.limiter import KeyLimiter

from .conftest import RecordingHook, Stack, eventually, stream_infer
from .test_proxy import one_row
from .upstream import start_model


def by_name(name: str, version: str, metadata: Metadata) -> str:
    return name or UNGUARDED


@asynccontextmanager
async def limited(limit: int, queue: int, wait: float = 30.0) -> AsyncIterator[Stack]:
    """The model server behind a proxy with `limit` slots and `queue` waiting per model name."""
    server, model, port = await start_model()
    hook = RecordingHook()
    limiter = KeyLimiter(limit, queue, wait)
    proxy = GrpcProxy(f"127.0.0.1:{port}", hook, limiter=limiter, slot_key=by_name)
    bound = await proxy.start("127.0.0.1", 0)
    try:
        yield Stack(proxy, model, hook, f"127.0.0.1:{port}", f"127.0.0.1:{bound}")
    finally:
        model.gate.set()
        await proxy.stop(1.0)
        await server.stop(1.0)


def held(model: str = "echo") -> pb.ModelInferRequest:
    """A request the model server holds until its gate opens."""
    request = one_row(model)
    request.parameters["hold"].string_param = "1"
    return request


def unary(channel: aio.Channel) -> Any:
    return channel.unary_unary(
        INFER, pb.ModelInferRequest.SerializeToString, pb.ModelInferResponse.FromString
    )


def keys(stack: Stack) -> dict[str, Any]:
    slots: dict[str, Any] = stack.proxy.status()["slots"]
    return dict(slots["keys"])


def test_the_model_is_read_from_the_request_header_alone() -> None:
    request = one_row("echo")
    request.model_version = "3"
    request.raw_input_contents.append(b"\0" * (1 << 20))
    assert request_target(request.SerializeToString()) == ("echo", "3")
    assert request_target(pb.ModelInferRequest(id="x").SerializeToString()) == ("", "")
    assert request_target(b"") == ("", "")
    assert request_target(b"\xff\xff\xff") == ("", "")  # no request message
    assert request_target(b"\x0a\x09ech") == ("", "")  # cut short
    assert request_target(b"\x08\x01") == ("", "")  # model_name is no varint


def disguised(request: pb.ModelInferRequest, first: str) -> bytes:
    """The request's bytes behind another model_name: protobuf keeps the last one."""
    head = pb.ModelInferRequest(model_name=first, id="x").SerializeToString()
    tail = pb.ModelInferRequest(model_name=request.model_name).SerializeToString()
    return head + request.SerializeToString() + tail


def test_the_model_is_the_last_one_the_request_names_as_protobuf_reads_it() -> None:
    raw = disguised(one_row("echo"), "other")
    assert pb.ModelInferRequest.FromString(raw).model_name == "echo"
    assert request_target(raw) == ("echo", "")


async def test_a_call_naming_another_model_first_takes_the_slots_of_the_one_it_calls() -> None:
    async with limited(1, 0) as s, aio.insecure_channel(s.target) as channel:
        first = unary(channel)(held())
        await eventually(lambda: s.model.holding == 1)
        raw: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(INFER)
        with pytest.raises(aio.AioRpcError) as raised:
            await raw(disguised(held(), "other"))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert s.model.holding == 1 and s.proxy.status()["busy"] == {"echo": 1}
        s.model.gate.set()
        assert (await first).model_name == "echo"


async def test_a_call_beyond_the_queue_is_refused_while_other_models_pass() -> None:
    async with limited(1, 1) as s, aio.insecure_channel(s.target) as channel:
        infer = unary(channel)
        first = infer(held())
        await eventually(lambda: s.model.holding == 1)
        second = infer(held())
        await eventually(lambda: keys(s) == {"echo": {"active": 1, "waiting": 1}})
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(held())
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = raised.value.details() or ""
        assert details.startswith("busy: too many requests waiting") and "(echo)" in details
        answer = await infer(one_row("other"))  # another model has its own slots
        assert answer.model_name == "other"
        assert [c.model_name for c in s.hook.calls] == ["echo", "other"]  # nothing refused
        s.model.gate.set()
        assert (await first).model_name == (await second).model_name == "echo"
        assert (await infer(one_row())).model_name == "echo"  # the slots came back
    status = s.proxy.status()
    assert status["busy"] == {"echo": 1}
    assert status["refused"] == {}  # the hook's refusals only
    assert status["statuses"] == {"OK": 4, "RESOURCE_EXHAUSTED": 1}
    assert status["slots"] == {"limit": 1, "queue": 1, "queue_timeout": 30.0, "keys": {}}


async def test_a_call_that_waits_too_long_is_refused() -> None:
    async with limited(1, 1, wait=0.2) as s, aio.insecure_channel(s.target) as channel:
        infer = unary(channel)
        first = infer(held())
        await eventually(lambda: s.model.holding == 1)
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(one_row())
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "timed out waiting" in (raised.value.details() or "")
        s.model.gate.set()
        assert (await first).model_name == "echo"
    assert s.proxy.status()["busy"] == {"echo": 1}


async def test_every_way_a_call_ends_gives_its_slot_back() -> None:
    async with limited(1, 0) as s, aio.insecure_channel(s.target) as channel:
        infer = unary(channel)
        failing = one_row()
        failing.parameters["fail"].string_param = "NOT_FOUND"
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(failing)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND  # the upstream's status
        s.hook.refuse_request = Refuse(grpc.StatusCode.PERMISSION_DENIED, "region closed")
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(one_row())
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        s.hook.refuse_request = None
        call = infer(held())
        await eventually(lambda: s.model.holding == 1)
        call.cancel()  # the client goes away
        await eventually(lambda: keys(s) == {})
        assert (await infer(one_row())).model_name == "echo"
    assert s.proxy.status()["busy"] == {}


async def test_a_call_cancelled_while_it_waits_leaves_the_queue() -> None:
    async with limited(1, 1) as s, aio.insecure_channel(s.target) as channel:
        infer = unary(channel)
        first = infer(held())
        await eventually(lambda: s.model.holding == 1)
        waiting = infer(one_row())
        await eventually(lambda: keys(s) == {"echo": {"active": 1, "waiting": 1}})
        waiting.cancel()
        await eventually(lambda: keys(s) == {"echo": {"active": 1, "waiting": 0}})
        second = infer(one_row())  # the queue has room again
        await eventually(lambda: keys(s) == {"echo": {"active": 1, "waiting": 1}})
        s.model.gate.set()
        assert (await first).model_name == (await second).model_name == "echo"
        await eventually(lambda: keys(s) == {})
    assert s.proxy.status()["busy"] == {}


async def test_a_stream_takes_no_slot_an_idle_one_would_hold() -> None:
    # A stream may idle as long as its client likes: holding slots, a few idle streams would
    # shut a model's calls out. Streams take none; each unary call takes one while it runs.
    async with limited(1, 0) as s, aio.insecure_channel(s.target) as channel:
        stream = stream_infer(channel)()
        await stream.write(one_row())
        assert (await stream.read()).infer_response.model_name == "echo"
        assert keys(s) == {}
        assert (await unary(channel)(one_row())).model_name == "echo"
        await stream.done_writing()
        assert await stream.code() == grpc.StatusCode.OK


async def test_max_calls_refuses_calls_of_any_model_beyond_it() -> None:
    server, model, port = await start_model()
    proxy = GrpcProxy(f"127.0.0.1:{port}", max_calls=1)
    bound = await proxy.start("127.0.0.1", 0)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{bound}") as channel:
            first = unary(channel)(held())
            await eventually(lambda: model.holding == 1)
            with pytest.raises(aio.AioRpcError) as raised:
                await unary(channel)(one_row("other"))
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            model.gate.set()
            assert (await first).model_name == "echo"
            assert (await unary(channel)(one_row("other"))).model_name == "other"
    finally:
        model.gate.set()
        await proxy.stop(1.0)
        await server.stop(1.0)
