"""Calls go through again soon after the model server comes back from an outage."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from grpc import aio

from guardproxy.grpc import INFER, GrpcProxy
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb

from .conftest import eventually
from .test_proxy import one_row
from .upstream import start_model

OUTAGE = 6.0  # seconds of failing calls: gRPC's default backoff would have grown past 4 s


async def keep_calling(infer: Any, answered: list[str]) -> None:
    """Call every 0.1 s until a call is answered (its model name kept)."""
    while not answered:
        with contextlib.suppress(aio.AioRpcError):
            answered.append((await infer(one_row(), timeout=1.0)).model_name)
        await asyncio.sleep(0.1)


async def test_calls_succeed_within_a_second_or_so_of_the_model_returning() -> None:
    server, _, port = await start_model()
    proxy = GrpcProxy(f"127.0.0.1:{port}")
    bound = await proxy.start("127.0.0.1", 0)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{bound}") as channel:
            infer = channel.unary_unary(
                INFER, pb.ModelInferRequest.SerializeToString, pb.ModelInferResponse.FromString
            )
            assert (await infer(one_row())).model_name == "echo"
            await server.stop(None)
            loop = asyncio.get_running_loop()
            ends = loop.time() + OUTAGE
            while loop.time() < ends:  # calls keep failing, the channel keeps reconnecting
                try:
                    await infer(one_row(), timeout=1.0)
                except aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
                await asyncio.sleep(0.2)
            server, _, _ = await start_model(port=port)  # back, on the port it had
            answered: list[str] = []
            calling = asyncio.create_task(keep_calling(infer, answered))
            try:
                await eventually(lambda: bool(answered), 2.5)  # a backoff of at most 1 s
            finally:
                calling.cancel()
            assert answered[0] == "echo"
    finally:
        await proxy.stop(1.0)
        await server.stop(None)
