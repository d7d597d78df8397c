"""The gRPC proxy with tritonclient.grpc and raw channels against a real model server."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from guardproxy.grpc import INFER, STREAM_INFER, Refuse, request_document
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.payloads.tensors import pack

from ..payloads.tritons import flat, same, tensors
from .conftest import Stack, eventually, stream_infer


def triton_inputs(arrays: dict[str, np.ndarray[Any, Any]]) -> list[triton.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


async def triton_infer(target: str, arrays: dict[str, Any], **extra: Any) -> Any:
    async with triton.InferenceServerClient(target) as client:
        return await client.infer("echo", triton_inputs(arrays), **extra)


async def test_answers_through_the_proxy_equal_direct_ones(stack: Stack) -> None:
    arrays = tensors()
    direct = await triton_infer(stack.direct, arrays)
    proxied = await triton_infer(
        stack.target, arrays, headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    )
    assert direct.get_response() == proxied.get_response()
    for name, array in arrays.items():
        assert same(proxied.as_numpy(name), array), name
    assert stack.model.metadata[-1]["traceparent"].startswith("00-aaaa")


async def test_the_hook_sees_request_and_answer_documents(stack: Stack) -> None:
    arrays = tensors()
    await triton_infer(stack.target, arrays, request_id="r-1")
    call = stack.hook.calls[0]
    assert (call.method, call.model_name) == ("ModelInfer", "echo")
    assert call.request["id"] == "r-1" and "inputs" not in call.request  # the header only
    inputs = {t["name"]: t for t in request_document(call.message)["inputs"]}
    for name, array in arrays.items():
        assert inputs[name]["data"] == flat(array), name
        assert inputs[name]["shape"] == list(array.shape)
    _, answer = stack.hook.answers[0]
    assert answer["model_name"] == "echo"
    score = next(t for t in answer["outputs"] if t["name"] == "score")
    assert score == {"name": "score", "datatype": "FP32", "shape": [3], "data": [0.25] * 3}


async def raw_infer(target: str, request: pb.ModelInferRequest, **extra: Any) -> Any:
    async with aio.insecure_channel(target) as channel:
        infer = channel.unary_unary(
            INFER, pb.ModelInferRequest.SerializeToString, pb.ModelInferResponse.FromString
        )
        call = infer(request, **extra)
        answer = await call
        return answer, await call.initial_metadata(), await call.trailing_metadata()


def one_row(model: str = "echo") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(pack("FP32", [1.0, 2.0], "x"))
    return request


async def test_metadata_the_hook_adds_reaches_the_client(stack: Stack) -> None:
    stack.hook.metadata = (("x-guard-decision", "1"), ("x-guard-threshold", "0.5"))
    _, initial, _ = await raw_infer(stack.target, one_row())
    assert ("x-guard-decision", "1") in tuple(initial)
    assert ("x-guard-threshold", "0.5") in tuple(initial)


async def test_a_changed_answer_keeps_untouched_outputs_byte_for_byte(stack: Stack) -> None:
    def add_decision(doc: dict[str, Any]) -> None:
        doc["outputs"].append(
            {"name": "guardproxy", "datatype": "INT64", "shape": [1], "data": [1]}
        )

    stack.hook.change = add_decision
    direct, _, _ = await raw_infer(stack.direct, one_row())
    answer, _, _ = await raw_infer(stack.target, one_row())
    assert [t.name for t in answer.outputs] == ["x", "score", "guardproxy"]
    assert answer.raw_output_contents[:2] == direct.raw_output_contents
    assert answer.raw_output_contents[2] == pack("INT64", [1], "d")


async def test_a_breaker_refusal_is_unavailable_with_retry_information(stack: Stack) -> None:
    stack.hook.refuse_request = Refuse(
        grpc.StatusCode.UNAVAILABLE, "breaker open", (("x-guard-breaker", "open"),), 12.5
    )
    with pytest.raises(aio.AioRpcError) as raised:
        await raw_infer(stack.target, one_row())
    err = raised.value
    assert err.code() == grpc.StatusCode.UNAVAILABLE and err.details() == "breaker open"
    trailers = dict(err.trailing_metadata())
    assert trailers["x-guard-breaker"] == "open"
    assert trailers["retry-after"] == "13"
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert (info.retry_delay.seconds, info.retry_delay.nanos) == (12, 500_000_000)
    assert stack.model.metadata == []  # the upstream was never called
    assert stack.proxy.status()["refused"] == {"UNAVAILABLE": 1}


async def test_a_guard_block_is_failed_precondition_for_tritonclient(stack: Stack) -> None:
    stack.hook.refuse_response = Refuse(grpc.StatusCode.FAILED_PRECONDITION, "label denied")
    with pytest.raises(InferenceServerException, match="label denied") as raised:
        await triton_infer(stack.target, {"INT32": np.array([[1, 2]], dtype=np.int32)})
    assert raised.value.status() == "StatusCode.FAILED_PRECONDITION"


async def test_upstream_failures_pass_through_with_trailers(stack: Stack) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await raw_infer(stack.target, one_row("broken"))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.details() == "model ran out of memory"
    assert dict(raised.value.trailing_metadata())["x-upstream-reason"] == "out of memory"
    assert stack.proxy.status()["upstream_errors"] == {"RESOURCE_EXHAUSTED": 1}


async def test_a_deadline_propagates_upstream(stack: Stack) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await raw_infer(stack.target, one_row("slow"), timeout=0.5)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    seen = stack.model.deadlines[-1]
    assert seen is not None and 0 < seen < 0.6  # the client's 0.5 s, not "no deadline"
    await eventually(lambda: stack.model.cancelled == 1)  # the upstream call ended too


async def test_unknown_methods_pass_through_unary_and_streaming(stack: Stack) -> None:
    async with aio.insecure_channel(stack.target) as channel:
        reverse = channel.unary_unary("/test.Echo/Reverse")
        call = reverse(b"abc", metadata=(("x-test", "hello"),))
        assert await call == b"cba"
        assert ("x-echo", "hello") in tuple(await call.initial_metadata())
        assert ("x-trailer", "t") in tuple(await call.trailing_metadata())
        count = channel.unary_stream("/test.Echo/Count")
        assert [m async for m in count(b"3")] == [b"0", b"1", b"2"]
        with pytest.raises(aio.AioRpcError) as raised:
            await reverse(b"fail")
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(aio.AioRpcError) as raised:
            await channel.unary_unary("/test.Nothing/Here")(b"")
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert stack.hook.calls == []
    assert stack.proxy.status()["calls"]["forward"] == 4


Outcome = tuple[str, str, str]  # status name, details, the x-trailer trailing metadata


async def unary_outcome(call: Any) -> Outcome:
    try:
        await call
    except aio.AioRpcError as err:
        trailer = dict(err.trailing_metadata() or ()).get("x-trailer", "")
        return err.code().name, err.details() or "", str(trailer)
    return "OK", "", ""


async def test_failed_forwarded_calls_keep_the_upstream_status(stack: Stack) -> None:
    async with aio.insecure_channel(stack.target) as channel:
        reverse = channel.unary_unary("/test.Echo/Reverse")
        nothing = channel.unary_unary("/test.Nothing/Here")
        outcomes = Counter(
            [await unary_outcome(reverse(b"fail") if i % 2 else nothing(b"")) for i in range(300)]
        )
    assert outcomes == {
        ("NOT_FOUND", "no such thing", "t"): 150,
        ("UNIMPLEMENTED", "Method not found!", ""): 150,
    }
    assert stack.proxy.status()["upstream_errors"] == {"NOT_FOUND": 150, "UNIMPLEMENTED": 150}


def streamed_outcomes(target: str, calls: list[tuple[str, list[bytes]]]) -> Counter[Outcome]:
    """Client-streaming calls on grpc's sync stack, which reports the status a server sends
    even when the server ends the call while requests are still being written."""
    outcomes: Counter[Outcome] = Counter()
    with grpc.insecure_channel(target) as channel:
        for method, requests in calls:
            try:
                channel.stream_unary(method)(iter(requests))
                outcomes["OK", "", ""] += 1
            except grpc.RpcError as err:
                assert isinstance(err, grpc.Call)
                trailer = dict(err.trailing_metadata() or ()).get("x-trailer", "")
                outcomes[err.code().name, err.details() or "", str(trailer)] += 1
    return outcomes


async def test_an_upstream_that_ends_a_call_before_its_requests_keeps_its_status(
    stack: Stack,
) -> None:
    requests = [b"x" * 100] * 8  # still being written upstream when the upstream has answered
    calls = [("/test.Nothing/Here", requests), ("/test.Echo/First", requests)] * 100
    outcomes = await asyncio.to_thread(streamed_outcomes, stack.target, calls)
    assert outcomes == {
        ("UNIMPLEMENTED", "Method not found!", ""): 100,
        ("FAILED_PRECONDITION", "one request is enough", "t"): 100,
    }


async def test_a_stream_the_upstream_fails_keeps_its_status(stack: Stack) -> None:
    failing = one_row()
    failing.parameters["fail"].string_param = "NOT_FOUND"
    requests = [failing.SerializeToString(), *[one_row().SerializeToString()] * 7]
    calls = [(STREAM_INFER, requests)] * 100
    outcomes = await asyncio.to_thread(streamed_outcomes, stack.target, calls)
    assert outcomes == {("NOT_FOUND", "asked to fail", ""): 100}


async def test_a_broken_hook_fails_open_and_is_counted(stack: Stack) -> None:
    stack.hook.fail = True
    direct, _, _ = await raw_infer(stack.direct, one_row())
    answer, _, _ = await raw_infer(stack.target, one_row())
    assert answer == direct
    assert stack.proxy.status()["errors"] == {"answer": 1}


async def test_a_broken_hook_fails_closed_when_asked(stack: Stack) -> None:
    stack.hook.fail = True
    stack.proxy.fail_closed = True
    with pytest.raises(aio.AioRpcError) as raised:
        await raw_infer(stack.target, one_row())
    assert raised.value.code() == grpc.StatusCode.INTERNAL


async def test_a_request_with_unreadable_tensors_goes_upstream_through_the_hook(
    stack: Stack,
) -> None:
    request = one_row()
    request.id = "r-9"
    request.raw_input_contents[0] = b"\x00" * 3  # 3 bytes for two FP32 values
    answer, _, _ = await raw_infer(stack.target, request)
    assert answer.model_name == "echo"
    [call] = stack.hook.calls  # the tensors are the hook's to decode (a lenient model answers)
    assert call.request == {"model_name": "echo", "model_version": "", "id": "r-9"}
    with pytest.raises(ValueError, match="3 bytes for 2 FP32 elements"):
        request_document(call.message)
    # The echo model sends the bad tensor back: the answer cannot be read (fail open).
    assert stack.proxy.status()["errors"] == {"answer": 1}


async def test_bytes_that_are_no_request_message_go_upstream_unhooked(stack: Stack) -> None:
    async with aio.insecure_channel(stack.target) as channel:
        with pytest.raises(aio.AioRpcError):  # the model cannot parse it either
            await channel.unary_unary(INFER)(b"\xff\xff\xff")
    assert stack.hook.calls == []
    assert stack.proxy.status()["errors"] == {"decode_request": 1}


async def test_stream_infer_through_the_hook(stack: Stack) -> None:
    stack.hook.metadata = (("x-guard-decision", "0"),)
    results: list[Any] = []
    async with triton.InferenceServerClient(stack.target) as client:

        async def requests() -> Any:
            for i in range(3):
                x = np.array([[i, i + 1]], dtype=np.int32)
                yield {
                    "model_name": "echo",
                    "inputs": triton_inputs({"INT32": x}),
                    "request_id": f"r{i}",
                }

        async for result, error in client.stream_infer(requests()):
            assert error is None
            results.append(result)
    assert [r.get_response().id for r in results] == ["r0", "r1", "r2"]
    assert [r.as_numpy("INT32").tolist() for r in results] == [[[0, 1]], [[1, 2]], [[2, 3]]]
    params = results[0].get_response().parameters
    assert params["x-guard-decision"].string_param == "0"
    assert [(c.request["id"], a["id"]) for c, a in stack.hook.answers] == [
        ("r0", "r0"),
        ("r1", "r1"),
        ("r2", "r2"),
    ]
    assert stack.proxy.status()["calls"]["stream_message"] == 3


async def test_a_stream_refusal_ends_the_stream_with_its_status(stack: Stack) -> None:
    stack.hook.refuse_request = Refuse(grpc.StatusCode.PERMISSION_DENIED, "region closed")
    async with triton.InferenceServerClient(stack.target) as client:

        async def requests() -> Any:
            yield {
                "model_name": "echo",
                "inputs": triton_inputs({"INT32": np.array([[1]], dtype=np.int32)}),
            }

        with pytest.raises(aio.AioRpcError) as raised:
            async for _ in client.stream_infer(requests()):
                pass
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert raised.value.details() == "region closed"
    assert stack.hook.answers == []  # no answer came back to check
    assert stack.proxy.status()["refused"] == {"PERMISSION_DENIED": 1}


async def test_start_and_stop(stack: Stack) -> None:
    status = stack.proxy.status()
    assert status["port"] == int(stack.target.rsplit(":", 1)[1])
    assert status["active"] == 0


async def test_an_upstream_failure_is_reported_to_the_hook_with_its_trailers(stack: Stack) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await raw_infer(stack.target, one_row("broken"))
    trailers = dict(raised.value.trailing_metadata())
    assert trailers["x-failed"] == "RESOURCE_EXHAUSTED"  # the hook's metadata, added
    assert trailers["x-upstream-reason"] == "out of memory"
    [(call, failure)] = stack.hook.failures
    assert call is stack.hook.calls[0]
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stack.hook.answers == []


async def test_a_timeout_caps_a_client_without_a_deadline(stack: Stack) -> None:
    stack.proxy.timeout = 0.3
    with pytest.raises(aio.AioRpcError) as raised:
        await raw_infer(stack.target, one_row("slow"))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    seen = stack.model.deadlines[-1]
    assert seen is not None and 0 < seen <= 0.31  # the remaining time, read a little later
    assert [f.code for _, f in stack.hook.failures] == [grpc.StatusCode.DEADLINE_EXCEEDED]


async def test_a_client_that_cancels_is_reported_once(stack: Stack) -> None:
    async with aio.insecure_channel(stack.target) as channel:
        infer = channel.unary_unary(
            INFER, pb.ModelInferRequest.SerializeToString, pb.ModelInferResponse.FromString
        )
        call = infer(one_row("slow"))
        await eventually(lambda: len(stack.model.metadata) == 1)  # the upstream has it
        call.cancel()
    await eventually(lambda: len(stack.hook.failures) == 1)
    assert stack.hook.failures[0][1].code == grpc.StatusCode.CANCELLED
    await eventually(lambda: stack.proxy.status()["active"] == 0)


async def test_a_request_whose_stream_answer_never_came_is_reported(stack: Stack) -> None:
    async with aio.insecure_channel(stack.target) as channel:
        stream = stream_infer(channel)
        call = stream()
        await call.write(one_row())
        first = await call.read()
        assert first.infer_response.model_name == "echo"
        await call.write(one_row("slow"))
        await eventually(lambda: stack.proxy.status()["calls"].get("stream_message") == 2)
        call.cancel()
    await eventually(lambda: len(stack.hook.failures) == 1)
    assert len(stack.hook.answers) == 1
    assert stack.hook.failures[0][1].code == grpc.StatusCode.CANCELLED
