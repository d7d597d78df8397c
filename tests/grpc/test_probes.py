"""gRPC calls admitted as half-open probes that end without an outcome give their slot back."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc import aio

from guardproxy.breaker.state import HALF_OPEN, CircuitBreaker
from guardproxy.grpc import INFER
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.payloads.tensors import pack
from guardproxy.testing import eventually

from .conftest import stream_infer
from .guarded import Guarded, guarded, infer, policy, rows

PROBES = policy().replace(
    "slow_call: 0.2s", "slow_call: 0.2s\n  half_open: {probes: 2, close_after_windows: 1}"
)


async def half_open(g: Guarded) -> CircuitBreaker:
    """The echo model's breaker, put half-open (one call first creates it)."""
    await infer(g.target, rows())
    breaker = g.proxy.runtime.breakers.breaker("default", "echo")
    assert breaker is not None
    breaker.transition(HALF_OPEN, "test")
    return breaker


async def refused(g: Guarded, request: pb.ModelInferRequest, deadline: str = "") -> grpc.StatusCode:
    """The status a call that fails ends with."""
    metadata = [("grpc-timeout", deadline)] if deadline else []
    with pytest.raises(aio.AioRpcError) as raised:
        await infer(g.target, request, metadata)
    return raised.value.code()


async def cancelled_while_held(g: Guarded, stream: bool) -> None:
    """A call (or a stream) the client cancels while the model holds its request."""
    async with aio.insecure_channel(g.target) as channel:
        held = rows(hold=1.0)
        if stream:
            call: aio.Call = stream_infer(channel)(iter([held]))
        else:
            unary = channel.unary_unary(
                INFER, pb.ModelInferRequest.SerializeToString, pb.ModelInferResponse.FromString
            )
            call = unary(held)
        await eventually(lambda: g.model.holding == 1)
        call.cancel()
        await eventually(lambda: g.model.holding == 0)


async def test_calls_without_an_outcome_give_their_probe_slot_back(tmp_path: Path) -> None:
    twice = rows(sex=["Male"])
    twice.inputs.add(name="sex", datatype="BYTES", shape=[1])
    twice.raw_input_contents.append(pack("BYTES", ["Female"], "sex"))
    async with guarded(tmp_path, PROBES, max_rows=4) as g:
        breaker = await half_open(g)
        # The client's own deadline, shorter than slow_call: says nothing about the model.
        assert await refused(g, rows(sleep=5.0), "50m") == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: breaker.probes_admitted == 0)
        assert await refused(g, rows(sex=["Female"] * 5)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await refused(g, twice) == grpc.StatusCode.INVALID_ARGUMENT
        await cancelled_while_held(g, stream=False)
        await eventually(lambda: breaker.probes_admitted == 0)
        await cancelled_while_held(g, stream=True)
        await eventually(lambda: breaker.probes_admitted == 0)
        assert (breaker.state_name, breaker.probes_released) == ("half_open", 5)
        _, initial, _ = await infer(g.target, rows())  # a real probe still gets through
        assert initial["x-guard-breaker"] == "half_open"
        assert breaker.probes_ok == 1
