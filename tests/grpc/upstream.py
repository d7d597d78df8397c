"""A small real OIP gRPC model server (grpc.aio, the generated stubs) for proxy tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from guardproxy.payloads.tensors import pack


class Model(pb_grpc.GRPCInferenceServiceServicer):
    """Echoes every input as an output of the same name and adds `score` (FP32, one per row).

    Model "slow" sleeps first (in streams too); model "broken" fails with a status and trailing
    metadata (in streams: an in-band error message). Any model obeys the request parameters
    `sleep` (seconds, before answering), `fail` (a status name to fail with) and `details`
    (fail INVALID_ARGUMENT with a google.rpc.Status naming it, as a rich error); a request
    with the parameter `hold` waits until `gate` is set (`holding`: how many wait now).
    """

    def __init__(self) -> None:
        self.metadata: list[dict[str, Any]] = []
        self.metadata_lists: list[list[tuple[str, Any]]] = []  # every key, repeated ones too
        self.deadlines: list[float | None] = []
        self.cancelled = 0
        self.gate = asyncio.Event()
        self.holding = 0

    async def hold(self, request: Any) -> None:
        """Wait for the gate when the request asks to be held."""
        if "hold" in request.parameters:
            self.holding += 1
            try:
                await self.gate.wait()
            finally:
                self.holding -= 1

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        self.metadata.append(dict(context.invocation_metadata()))
        self.metadata_lists.append(list(context.invocation_metadata()))
        self.deadlines.append(context.time_remaining())
        if request.model_name == "slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if request.model_name == "broken":
            context.set_trailing_metadata((("x-upstream-reason", "out of memory"),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "model ran out of memory")
        await self.hold(request)
        await obey(request, context)
        return answer(request)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        self.metadata_lists.append(list(context.invocation_metadata()))
        async for request in requests:
            if request.model_name == "slow":
                await asyncio.sleep(30)
            if request.model_name == "broken":
                yield pb.ModelStreamInferResponse(error_message="model is broken")
                continue
            await self.hold(request)
            await obey(request, context)
            yield pb.ModelStreamInferResponse(infer_response=answer(request))


async def obey(request: Any, context: Any) -> None:
    """The request's `sleep` and `fail` parameters."""
    params = request.parameters
    if "sleep" in params:
        await asyncio.sleep(params["sleep"].double_param)
    if "fail" in params:
        await context.abort(grpc.StatusCode[params["fail"].string_param], "asked to fail")
    if "details" in params:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "bad input",
            rich_details(params["details"].string_param),
        )


def rich_details(field: str) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata of a rich INVALID_ARGUMENT: a google.rpc.Status with a BadRequest."""
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description="bad")
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(code=3, message="bad input", details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()),)


def answer(request: Any) -> pb.ModelInferResponse:
    rows = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
    out = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
    for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=False):
        out.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        out.raw_output_contents.append(raw)
    out.outputs.add(name="score", datatype="FP32", shape=[rows])
    out.raw_output_contents.append(pack("FP32", [0.25] * rows, "score"))
    return out


async def echo_reverse(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
    """An unknown service's unary method: the bytes reversed, with metadata both ways."""
    seen = dict(context.invocation_metadata() or ())
    await context.send_initial_metadata((("x-echo", str(seen.get("x-test", ""))),))
    context.set_trailing_metadata((("x-trailer", "t"),))
    if request == b"fail":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return request[::-1]


async def echo_first(
    requests: AsyncIterator[bytes], context: aio.ServicerContext[bytes, bytes]
) -> bytes:
    """An unknown service's client-streaming method: fails as soon as the first request came."""
    async for _ in requests:
        break
    context.set_trailing_metadata((("x-trailer", "t"),))
    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "one request is enough")


async def echo_count(request: bytes, context: Any) -> AsyncIterator[bytes]:
    """An unknown service's server-streaming method: n answers for b"n"."""
    for i in range(int(request)):
        yield str(i).encode()


class Unknown(grpc.GenericRpcHandler):
    """test.Echo/Reverse (unary), test.Echo/First (client streaming) and test.Echo/Count (server
    streaming), on raw bytes."""

    def service(self, details: Any) -> Any:
        if details.method == "/test.Echo/Reverse":
            return grpc.unary_unary_rpc_method_handler(echo_reverse)
        if details.method == "/test.Echo/First":
            return grpc.stream_unary_rpc_method_handler(echo_first)
        if details.method == "/test.Echo/Count":
            return grpc.unary_stream_rpc_method_handler(echo_count)
        return None


SERVICE = "inference.GRPCInferenceService"
# The raw answer messages a scripted stream sends for one request (none, one or several).
Script = Callable[[Any], Sequence[bytes]]


def bare(request: Any, **changes: Any) -> bytes:
    """The echo answer to a request as MLServer streams it: a ModelInferResponse, unwrapped.

    `changes` set fields of the answer (`id`), and `final=False` marks it not the last one.
    """
    out = answer(request)
    final = changes.pop("final", None)
    for name, value in changes.items():
        setattr(out, name, value)
    if final is not None:
        out.parameters["triton_final_response"].bool_param = final
    return out.SerializeToString()


def wrapped(request: Any, **changes: Any) -> bytes:
    """The same answer as Triton streams it, in a ModelStreamInferResponse."""
    inner = pb.ModelInferResponse.FromString(bare(request, **changes))
    return pb.ModelStreamInferResponse(infer_response=inner).SerializeToString()


class Scripted:
    """ModelStreamInfer on raw bytes: each request answered with what `script` gives for it
    (bare or wrapped answers, several, none, or bytes that are no message at all)."""

    def __init__(self, script: Script) -> None:
        self.script = script

    async def stream(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for raw in requests:
            for message in self.script(pb.ModelInferRequest.FromString(raw)):
                yield message


async def start_model(script: Script | None = None, port: int = 0) -> tuple[aio.Server, Model, int]:
    """The model server on a loopback port (0: a free one), its streams answered by `script`
    if given."""
    model = Model()
    server = aio.server()
    if script is None:
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(model, server)
    else:  # one handler per service name is asked: ModelInfer the model's, streams scripted
        infer = grpc.unary_unary_rpc_method_handler(
            model.ModelInfer,
            pb.ModelInferRequest.FromString,
            pb.ModelInferResponse.SerializeToString,
        )
        stream: grpc.RpcMethodHandler[bytes, bytes] = grpc.stream_stream_rpc_method_handler(
            Scripted(script).stream
        )
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "ModelInfer": infer,
            "ModelStreamInfer": stream,
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_generic_rpc_handlers((Unknown(),))
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, model, port


class Eager(pb_grpc.GRPCInferenceServiceServicer):
    """A stream that reads every request as it comes (as Triton queues them) and answers
    them, in order, once `gate` is set; `received` counts the requests read. A request of
    model "broken" is answered an in-band error that names no request (Triton's names the
    request's id)."""

    def __init__(self) -> None:
        self.received = 0
        self.gate = asyncio.Event()

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def read() -> None:
            async for request in requests:
                self.received += 1
                queue.put_nowait(request)
            queue.put_nowait(None)

        reading = asyncio.create_task(read())
        await self.gate.wait()
        while (request := await queue.get()) is not None:
            if request.model_name == "broken":
                yield pb.ModelStreamInferResponse(error_message="model is broken")
                continue
            yield pb.ModelStreamInferResponse(infer_response=answer(request))
        await reading


async def start_eager() -> tuple[aio.Server, Eager, int]:
    """The eager stream server on a free loopback port."""
    model = Eager()
    server = aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(model, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, model, port
