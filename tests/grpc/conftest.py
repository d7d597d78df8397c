"""A real model server behind a real gRPC proxy, each on its own loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from grpc import aio

from guardproxy.grpc import STREAM_INFER, Allow, Failure, GrpcProxy, InferCall, Refuse
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.grpc.hooks import Metadata

from .upstream import Model, start_model


@dataclass
class RecordingHook:
    """Keeps what it is shown; answers what the test sets."""

    calls: list[InferCall] = field(default_factory=list)
    answers: list[tuple[InferCall, dict[str, Any]]] = field(default_factory=list)
    failures: list[tuple[InferCall, Failure]] = field(default_factory=list)
    refuse_request: Refuse | None = None
    refuse_response: Refuse | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    change: Callable[[dict[str, Any]], None] | None = None
    fail: bool = False

    async def on_request(self, call: InferCall) -> Refuse | None:
        self.calls.append(call)
        return self.refuse_request

    def reads_answer(self, call: InferCall) -> bool:
        return True

    def request_id(self, call: InferCall) -> str | None:
        return None

    async def on_response(
        self, call: InferCall, response: dict[str, Any], final: bool = True
    ) -> Allow | Refuse:
        self.answers.append((call, response))
        if self.fail:
            raise RuntimeError("the hook broke")
        if self.refuse_response is not None:
            return self.refuse_response
        if self.change is not None:
            self.change(response)
            return Allow(self.metadata, response)
        return Allow(self.metadata)

    async def on_failure(self, call: InferCall, failure: Failure) -> tuple[tuple[str, str], ...]:
        self.failures.append((call, failure))
        return (("x-failed", failure.code.name),)

    def refuses(self, method: str, metadata: Metadata) -> Refuse | None:
        return None


@dataclass
class Stack:
    proxy: GrpcProxy
    model: Model
    hook: RecordingHook
    direct: str  # host:port of the model server
    target: str  # host:port of the proxy


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    server, model, port = await start_model()
    hook = RecordingHook()
    proxy = GrpcProxy(f"127.0.0.1:{port}", hook)
    bound = await proxy.start("127.0.0.1", 0)
    try:
        yield Stack(proxy, model, hook, f"127.0.0.1:{port}", f"127.0.0.1:{bound}")
    finally:
        await proxy.stop(1.0)
        await server.stop(1.0)


async def eventually(check: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll until check() holds (AssertionError after `limit` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def stream_infer(channel: aio.Channel) -> Any:
    """ModelStreamInfer on a channel, its messages protobuf both ways."""
    return channel.stream_stream(
        STREAM_INFER, pb.ModelInferRequest.SerializeToString, pb.ModelStreamInferResponse.FromString
    )
