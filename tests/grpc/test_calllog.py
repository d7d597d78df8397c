"""Each gRPC call through `serve` is one access log line and one SERVER span, like HTTP's."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc import aio

from guardproxy.logs.access import ACCESS_LOGGER
from guardproxy.testing import OtlpReceiver, attributes_of, eventually, otlp_receiver

from .guarded import ADMIN, guarded, infer, rows

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
SERVER = 2  # opentelemetry.proto Span.SpanKind.SPAN_KIND_SERVER
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    """A real OTLP/HTTP receiver on a free port."""
    async with otlp_receiver() as running:
        yield running


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The access log records so far, as their fields."""
    names = ("method", "path", "status", "bytes", "request_id", "region", "model", "outcome")
    return [{n: getattr(r, n) for n in names} for r in caplog.records if r.name == ACCESS_LOGGER]


async def test_a_call_continues_the_client_trace_and_parents_the_upstream_call(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    async with guarded(tmp_path, otlp_endpoint=receiver.url) as g:
        traced = [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"), ("x-request-id", "t-1")]
        await infer(g.target, rows(), traced)
        assert await asyncio.to_thread(g.proxy.runtime.telemetry.flush)
        upstream_parent = g.model.metadata[-1]["traceparent"]
    (span,) = [s for s in receiver.spans() if s.kind == SERVER]
    assert span.name == "inference.GRPCInferenceService/ModelInfer"
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_ID
    assert upstream_parent == f"00-{TRACE_ID}-{span.span_id.hex()}-01"
    attributes = attributes_of(span.attributes)
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "inference.GRPCInferenceService"
    assert attributes["rpc.method"] == "ModelInfer"
    assert attributes["rpc.grpc.status_code"] == 0
    # The decision observer annotates the call's span as it does an HTTP request's.
    assert attributes["guardproxy.model"] == "echo"
    assert attributes["guardproxy.outcome"] == "decided"
    assert attributes["guardproxy.rows"] == 2


async def test_a_refused_call_is_an_error_span_with_its_status(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    async with guarded(tmp_path, otlp_endpoint=receiver.url) as g, aiohttp.ClientSession() as http:
        await http.post(
            g.proxy.admin_url + "/admin/breaker/default", json={"state": "forced_open"},
            headers=ADMIN,
        )  # fmt: skip
        with pytest.raises(aio.AioRpcError):
            await infer(g.target, rows())
        assert await asyncio.to_thread(g.proxy.runtime.telemetry.flush)
    (span,) = [s for s in receiver.spans() if s.kind == SERVER]
    attributes = attributes_of(span.attributes)
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert attributes["error.type"] == "UNAVAILABLE"
    assert span.status.code == 2  # STATUS_CODE_ERROR


async def test_every_call_is_one_access_line_with_what_it_became(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, ACCESS_LOGGER)
    async with guarded(tmp_path, access_log=True) as g, aiohttp.ClientSession() as http:
        answer, _, _ = await infer(g.target, rows(), [("x-request-id", "line-1")])
        with pytest.raises(aio.AioRpcError):
            await infer(g.target, rows(model="tagger", tags=["gorilla"]))
        async with aio.insecure_channel(g.target) as channel:
            assert await channel.unary_unary("/test.Echo/Reverse")(b"abc") == b"cba"
        await http.post(
            g.proxy.admin_url + "/admin/breaker/default", json={"state": "forced_open"},
            headers=ADMIN,
        )  # fmt: skip
        with pytest.raises(aio.AioRpcError):
            await infer(g.target, rows(), [("x-request-id", "open-1")])
        await eventually(lambda: len(lines(caplog)) == 4)
    decided, blocked, forwarded, refused = lines(caplog)
    assert decided == {
        "method": "GRPC", "path": INFER, "status": 200, "bytes": answer.ByteSize(),
        "request_id": "line-1", "region": "default", "model": "echo", "outcome": "decided",
    }  # fmt: skip
    assert (blocked["status"], blocked["model"], blocked["outcome"]) == (400, "tagger", "blocked")
    assert len(blocked["request_id"]) == 32  # generated, as the client was told
    assert (forwarded["path"], forwarded["status"], forwarded["outcome"]) == (
        "/test.Echo/Reverse", 200, "unguarded",
    )  # fmt: skip
    assert (refused["status"], refused["outcome"], refused["request_id"]) == (
        503, "refused", "open-1",
    )  # fmt: skip


async def test_call_durations_are_a_histogram_by_method_and_status(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g, aiohttp.ClientSession() as http:
        await infer(g.target, rows())
        async with aio.insecure_channel(g.target) as channel:
            # Methods the proxy does not name, whatever a client calls: one series for all.
            assert await channel.unary_unary("/test.Echo/Reverse")(b"abc") == b"cba"
            assert await channel.unary_unary("/test.Echo/Reverse")(b"ab") == b"ba"
            assert [m async for m in channel.unary_stream("/test.Echo/Count")(b"2")] == [b"0", b"1"]
        async with http.get(g.proxy.admin_url + "/metrics") as response:
            text = await response.text()
    counts = {
        re.sub(r'otel_scope_\w+="[^"]*",', "", line.split("{", 1)[1].split("}", 1)[0]): float(
            line.rsplit(" ", 1)[1]
        )
        for line in text.splitlines()
        if line.startswith("rpc_server_call_duration_seconds_count{")
    }
    assert counts == {
        'rpc_grpc_status_code="0",rpc_method="ModelInfer"': 1.0,
        'rpc_grpc_status_code="0",rpc_method="_OTHER"': 3.0,
    }
