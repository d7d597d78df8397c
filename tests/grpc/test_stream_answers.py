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
from guardproxy.grpc.streams import UNREADABLE, parse_answer

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
