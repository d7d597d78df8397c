"""A real MLServer behind guardproxy's two ports: gRPC (tritonclient) and HTTP decide alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc.aio as triton
import tritonclient.grpc.service_pb2 as service
from grpc import aio
from tritonclient.utils import InferenceServerException

from guardproxy.grpc import INFER, STREAM_INFER
from guardproxy.testing import (
    RunningProxy,
    eventually,
    proxy_settings,
    running_proxy,
    write_policies,
)

from .guarded import ADMIN, FEEDBACK
from .mlserver import mlserver

pytestmark = pytest.mark.slow

POLICY = """
region: default
models:
  - name: scorer
    score: {output: predict_proba, index: 1}   # P(class 1)
groups:
  attribute: {header: X-Group, trusted: true}
  values: [a, b]
decision:
  threshold: 0.6
  per_group: {a: 0.3}
  annotate: body
breaker:
  open: {action: reject}
"""
BATCH = 8


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[RunningProxy]:
    policies = write_policies(tmp_path / "policies", {"default.yaml": POLICY})
    async with mlserver(tmp_path / "model") as server:
        settings = proxy_settings(
            server.http, policies=policies, samples_dir=tmp_path / "samples",
            grpc_listen=("127.0.0.1", 0), grpc_upstream=server.grpc,
        )  # fmt: skip
        async with running_proxy(settings) as proxy:
            yield proxy


def batches() -> list[tuple[str, np.ndarray[Any, Any]]]:
    """Six batches of 8 rows, groups a and b in turn, scores spread over (0, 1)."""
    rng = np.random.default_rng(7)
    return [("ab"[i % 2], rng.standard_normal((BATCH, 3)) * 1.5) for i in range(6)]


async def over_http(proxy: RunningProxy, group: str, rows: Any) -> tuple[str, list[int]]:
    body = {
        "inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64",
                    "data": rows.flatten().tolist()}],
        "outputs": [{"name": "predict_proba"}],
    }  # fmt: skip
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            proxy.url + "/v2/models/scorer/infer",
            json=body,
            headers={"X-Group": group, "Accept-Encoding": "identity"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        answer = await response.json()
        decisions = next(o for o in answer["outputs"] if o["name"] == "guardproxy")["data"]
        return response.headers["X-Guard-Decision"], decisions


async def over_grpc(target: str, group: str, rows: Any, request_id: str) -> Any:
    inputs = [triton.InferInput("x", list(rows.shape), "FP64")]
    inputs[0].set_data_from_numpy(rows)
    async with triton.InferenceServerClient(target) as client:
        return await client.infer(
            "scorer", inputs, outputs=[triton.InferRequestedOutput("predict_proba")],
            headers={"x-group": group, "x-request-id": request_id},
        )  # fmt: skip


@pytest.mark.timeout(240)
async def test_grpc_and_http_decide_every_row_alike(stack: RunningProxy) -> None:
    assert stack.grpc_target is not None
    decided = []
    for i, (group, rows) in enumerate(batches()):
        header, http_decisions = await over_http(stack, group, rows)
        result = await over_grpc(stack.grpc_target, group, rows, f"g-{i}")
        grpc_decisions = result.as_numpy("guardproxy").tolist()
        assert grpc_decisions == http_decisions == [int(d) for d in header.split(",")]
        proba = result.as_numpy("predict_proba")[:, 1]
        threshold = 0.3 if group == "a" else 0.6
        assert grpc_decisions == [int(p >= threshold) for p in proba]
        decided += grpc_decisions
    assert 0 < sum(decided) < len(decided)  # both decisions occur
    guards = stack.runtime.status()["grpc"]["guards"]  # type: ignore[index]
    assert guards["guarded"] == 6


def scorer_request(rows: Any, request_id: str = "") -> Any:
    """A ModelInferRequest of the scorer, its rows as raw FP64 contents."""
    request = service.ModelInferRequest(model_name="scorer", id=request_id)
    request.inputs.add(name="x", datatype="FP64", shape=list(rows.shape))
    request.raw_input_contents.append(rows.astype("<f8").tobytes())
    request.outputs.add(name="predict_proba")
    return request


@pytest.mark.timeout(240)
async def test_every_stream_answer_of_mlserver_is_guarded(stack: RunningProxy) -> None:
    assert stack.grpc_target is not None
    group, rows = batches()[0]
    header, _ = await over_http(stack, group, rows)
    requests = [scorer_request(rows, "s-0")]  # the sklearn runtime answers a stream's first
    async with aio.insecure_channel(stack.grpc_target) as channel:
        streams = channel.stream_stream(
            STREAM_INFER, service.ModelInferRequest.SerializeToString,
            service.ModelInferResponse.FromString,
        )  # fmt: skip
        call = streams(iter(requests), metadata=(("x-group", group),))
        answers = [answer async for answer in call]  # bare ModelInferResponse, as MLServer sends
    assert [a.id for a in answers] == ["s-0"]
    assert answers[0].parameters["x-guard-decision"].string_param == header
    assert "guardproxy" in [o.name for o in answers[0].outputs]  # annotate: body
    grpc_status = cast(dict[str, Any], stack.runtime.status()["grpc"])
    assert grpc_status["guards"]["guarded"] == 1 and grpc_status["calls"]["errors"] == {}


@pytest.mark.timeout(240)
async def test_metadata_of_a_real_call_carries_the_http_headers(stack: RunningProxy) -> None:
    assert stack.grpc_target is not None
    group, rows = batches()[0]
    header, _ = await over_http(stack, group, rows)
    request = scorer_request(rows)
    async with aio.insecure_channel(stack.grpc_target) as channel:
        infer = channel.unary_unary(
            INFER, service.ModelInferRequest.SerializeToString,
            service.ModelInferResponse.FromString,
        )  # fmt: skip
        call = infer(request, metadata=(("x-group", group), ("x-request-id", "meta-1")))
        await call
        metadata = dict(await call.initial_metadata())
    assert metadata["x-guard-decision"] == header
    assert metadata["x-request-id"] == "meta-1"
    assert (metadata["x-guard-model"], metadata["x-guard-region"]) == ("scorer", "default")
    assert metadata["x-guard-threshold"] == ",".join(["0.3"] * BATCH)


@pytest.mark.timeout(240)
async def test_labels_join_grpc_predictions_and_an_open_breaker_is_unavailable(
    stack: RunningProxy,
) -> None:
    assert stack.grpc_target is not None
    group, rows = batches()[1]
    await over_grpc(stack.grpc_target, group, rows, "lab-1")
    engine = stack.runtime.engine
    await eventually(lambda: engine.recorded == BATCH)
    ids = ["lab-1"] + [f"lab-1:{i}" for i in range(1, BATCH)]
    labels = [{"request_id": rid, "label": i % 2} for i, rid in enumerate(ids)]
    async with aiohttp.ClientSession() as http:
        async with http.post(
            stack.url + "/guardproxy/v1/feedback", json=labels, headers=FEEDBACK
        ) as response:
            assert response.status == 200
            assert (await response.json())["totals"]["joined"] == BATCH
        async with http.post(
            stack.admin_url + "/admin/breaker/default", json={"state": "forced_open"},
            headers=ADMIN,
        ) as response:  # fmt: skip
            assert response.status == 200
    with pytest.raises(InferenceServerException) as raised:
        await over_grpc(stack.grpc_target, group, rows, "lab-2")
    assert raised.value.status() == "StatusCode.UNAVAILABLE"
    assert "circuit breaker open" in raised.value.message()
