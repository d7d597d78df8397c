"""Parsed gRPC requests count against the proxy's body budget while their call lasts."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import cast

import grpc
import pytest
from grpc import aio

from guardproxy.grpc import InferCall
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.grpc.held import held_bytes
from guardproxy.hotpath.bodies import BUDGET_FULL
from guardproxy.testing import eventually

from .conftest import stream_infer
from .guarded import Guarded, grpc_status, guarded, infer

VALUES = 500_000  # INT64 zeros: 0.5 MB on the wire, ~8 MB once parsed


def int64s(model: str = "other", hold: bool = True) -> pb.ModelInferRequest:
    """A request of typed INT64 zeros, held by the model server until its gate opens."""
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="x", datatype="INT64", shape=[VALUES])
    tensor.contents.int64_contents.extend([0] * VALUES)
    if hold:
        request.parameters["hold"].bool_param = True
    return request


def bodies(g: Guarded) -> dict[str, int]:
    """The body budget's counters (shared by both ports)."""
    return cast(dict[str, int], g.proxy.runtime.status()["request_bodies"])


def test_a_parse_is_counted_at_what_it_holds() -> None:
    request = int64s()
    wire = request.ByteSize()
    assert wire < 600_000
    assert held_bytes(request, wire) == 2 * wire + 2 * 8 * VALUES


async def test_calls_beyond_the_budget_are_refused_until_one_ends(tmp_path: Path) -> None:
    limits = guarded(tmp_path, max_body=4 << 20, max_buffered=12 << 20)  # one such call fits
    async with limits as g, aio.insecure_channel(g.target) as channel:
        unary = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            pb.ModelInferRequest.SerializeToString,
            pb.ModelInferResponse.FromString,
        )
        first = unary(int64s())
        await eventually(lambda: g.model.holding == 1)
        assert bodies(g)["reserved"] > 8 << 20
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(g.target, int64s())
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert raised.value.details() == BUDGET_FULL
        assert dict(raised.value.trailing_metadata())["retry-after"] == "1"
        stream = stream_infer(channel)(iter([int64s()]))  # a stream's message as well
        with pytest.raises(aio.AioRpcError) as raised:
            await stream.read()
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert g.model.holding == 1 and bodies(g)["refused"] == 2
        g.model.gate.set()
        assert (await first).model_name == "other"
        await eventually(lambda: bodies(g)["reserved"] == 0)
        answer, _, _ = await infer(g.target, int64s(hold=False))  # room again
        assert answer.model_name == "other"
        assert grpc_status(g)["calls"]["busy"] == {"request_bodies": 2}
        assert grpc_status(g)["calls"]["refused"] == {}  # the proxy's own refusals, not the guards'


async def test_a_refused_call_frees_its_parsed_request_at_once(tmp_path: Path) -> None:
    # grpc keeps an abort in a reference cycle: its traceback must not keep the parse alive
    # until the collector's next full pass (with the collector off, never).
    async with guarded(tmp_path, max_body=4 << 20, max_buffered=12 << 20) as g:
        first = asyncio.ensure_future(infer(g.target, int64s()))
        await eventually(lambda: g.model.holding == 1)
        gc.disable()
        try:
            for _ in range(3):
                with pytest.raises(aio.AioRpcError):
                    await infer(g.target, int64s())
            alive = [o for o in gc.get_objects() if isinstance(o, InferCall)]
        finally:
            gc.enable()
        assert len(alive) == 1  # the call the model holds
        g.model.gate.set()
        await first
