"""Stream answers, wrapped (Triton) or bare (MLServer), are guarded; unreadable ones end it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from guardproxy.grpc import STREAM_INFER
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.grpc.streams import UNPAIRED, UNREADABLE, parse_answer

from .conftest import stream_infer
from .guarded import grpc_status, guarded, parameters, rows
from .test_guarding import output
from .upstream import Script, bare, wrapped


async def bare_stream(target: str, requests: Sequence[pb.ModelInferRequest]) -> list[Any]:
    """A ModelStreamInfer call read as MLServer answers: bare ModelInferResponse messages."""
    async with aio.insecure_channel(target) as channel:
        streams = channel.stream_stream(
            STREAM_INFER, pb.ModelInferRequest.SerializeToString, pb.ModelInferResponse.FromString
        )
        return [answer async for answer in streams(iter(requests))]


def suppressed() -> pb.ModelInferRequest:
    """A request whose echoed `tags` the suppressor model's label guard rewrites."""
    return rows("suppressor", tags=["cat", "gorilla"], request_id="s-1")


@pytest.mark.parametrize("form", ["auto", "mlserver"])
async def test_bare_answers_are_guarded(tmp_path: Path, form: str) -> None:
    script: Script = lambda request: [bare(request)]  # noqa: E731
    async with guarded(tmp_path, script=script, grpc_stream_answers=form) as g:
        (answer,) = await bare_stream(g.target, [suppressed()])
        assert output(answer, "tags") == ["cat", ""]
        assert parameters(answer)["x-guard-decision"] == "1,0"
        assert parameters(answer)["x-guard-labels"] == "suppressed=1"
        assert grpc_status(g)["calls"]["errors"] == {}


@pytest.mark.parametrize(
    ("form", "script"),
    [
        ("auto", lambda request: [b"\xff\xff\xff"]),  # no message at all
        ("triton", lambda request: [bare(request)]),  # MLServer's answer, Triton's expected
        ("mlserver", lambda request: [b"\x0a\x01x\xa2\x06\x01y"]),  # an unknown field 100
    ],
)
async def test_an_unreadable_answer_ends_a_stream_with_a_guarded_request(
    tmp_path: Path, form: str, script: Script
) -> None:
    async with guarded(tmp_path, script=script, grpc_stream_answers=form) as g:
        with pytest.raises(aio.AioRpcError) as raised:
            await bare_stream(g.target, [suppressed()])
        assert raised.value.code() == grpc.StatusCode.INTERNAL
        assert raised.value.details() == UNREADABLE
        calls = grpc_status(g)["calls"]
        assert calls["errors"] == {"stream_unreadable": 1}
        assert calls["statuses"] == {"INTERNAL": 1}


async def test_an_unreadable_answer_to_unguarded_requests_passes(tmp_path: Path) -> None:
    script: Script = lambda request: [b"\xff\xff\xff"]  # noqa: E731
    async with guarded(tmp_path, script=script) as g, aio.insecure_channel(g.target) as channel:
        streams: aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(STREAM_INFER)
        call = streams(iter([rows("other").SerializeToString()]))
        assert [answer async for answer in call] == [b"\xff\xff\xff"]
        assert grpc_status(g)["calls"]["errors"] == {"stream_unreadable": 1}


def test_each_form_is_told_from_the_other() -> None:
    request = rows(request_id="r")
    outer, answer = parse_answer(wrapped(request), "auto")
    assert isinstance(outer, pb.ModelStreamInferResponse) and answer is outer.infer_response
    outer, answer = parse_answer(bare(request), "auto")
    assert isinstance(outer, pb.ModelInferResponse) and answer is outer and answer.id == "r"
    error = pb.ModelStreamInferResponse(error_message="boom").SerializeToString()
    assert parse_answer(error, "auto")[1] is None  # Triton's in-band error
    with pytest.raises(ValueError, match="not a ModelStreamInferResponse"):
        parse_answer(bare(request), "triton")


async def answers_and_status(
    target: str, requests: Sequence[pb.ModelInferRequest]
) -> tuple[list[pb.ModelInferResponse], grpc.StatusCode]:
    """A ModelStreamInfer call: the answers that came, and how the stream ended."""
    got: list[pb.ModelInferResponse] = []
    async with aio.insecure_channel(target) as channel:
        call = stream_infer(channel)(iter(requests))
        try:
            async for answer in call:
                got.append(answer.infer_response)
        except aio.AioRpcError as err:
            assert err.details() in ("", UNPAIRED)
            return got, err.code()
    return got, grpc.StatusCode.OK


def decoupled(request: Any) -> list[bytes]:
    """Three answers to one request, the last marked final, then Triton's empty end marker."""
    answers = [wrapped(request, final=False) for _ in range(3)]
    end = pb.ModelInferResponse(id=request.id)
    end.parameters["triton_final_response"].bool_param = True
    return [*answers, pb.ModelStreamInferResponse(infer_response=end).SerializeToString()]


@pytest.mark.parametrize("request_id", ["q-1", ""])
async def test_every_answer_of_a_decoupled_model_is_guarded(
    tmp_path: Path, request_id: str
) -> None:
    request = rows("suppressor", tags=["cat", "gorilla"], request_id=request_id)
    async with guarded(tmp_path, script=decoupled) as g:
        answers, code = await answers_and_status(g.target, [request, request])
        assert code == grpc.StatusCode.OK and len(answers) == 8
        for answer in answers[:3] + answers[4:7]:
            assert output(answer, "tags") == ["cat", ""]
            assert parameters(answer)["x-guard-labels"] == "suppressed=1"
        assert [set(parameters(answers[i])) for i in (3, 7)] == [{"x-request-id"}] * 2
        status = grpc_status(g)
        assert status["calls"]["errors"] == {} and status["guards"]["unpaired"] == 0
        assert status["guards"]["pending"] == 0
        await g.proxy.runtime.worker.flush()
        assert g.proxy.runtime.health.recent(("default", "suppressor"))["total"]["decided"] == 6


@pytest.mark.parametrize(
    ("request_id", "script"),
    [
        ("", lambda request: [wrapped(request), wrapped(request)]),  # answered twice
        ("q-1", lambda request: [wrapped(request), wrapped(request)]),
        ("q-1", lambda request: [wrapped(request, id="someone-else")]),  # an id not echoed
        ("q-1", lambda request: [wrapped(request, id="")]),
    ],
)
async def test_an_answer_that_pairs_with_no_request_ends_a_guarded_stream(
    tmp_path: Path, request_id: str, script: Script
) -> None:
    request = rows("suppressor", tags=["cat", "gorilla"], request_id=request_id)
    async with guarded(tmp_path, script=script) as g:
        answers, code = await answers_and_status(g.target, [request])
        assert code == grpc.StatusCode.INTERNAL
        assert all(output(answer, "tags") == ["cat", ""] for answer in answers)  # none unguarded
        assert grpc_status(g)["calls"]["errors"] == {"stream_unpaired": 1}


async def test_unpaired_answers_on_an_unguarded_stream_pass(tmp_path: Path) -> None:
    script: Script = lambda request: [wrapped(request), wrapped(request)]  # noqa: E731
    async with guarded(tmp_path, script=script) as g:
        answers, code = await answers_and_status(g.target, [rows("other")])
        assert code == grpc.StatusCode.OK and len(answers) == 2
        assert grpc_status(g)["calls"]["errors"] == {"stream_unpaired": 1}
