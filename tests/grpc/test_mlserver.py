"""A real MLServer (mlserver-sklearn) serving a scikit-learn model, reached through the proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton

from guardproxy.grpc import GrpcProxy, Refuse, request_document

from .conftest import RecordingHook
from .mlserver import mlserver

pytestmark = pytest.mark.slow


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[str]:
    async with mlserver(tmp_path) as running:
        yield running.grpc


async def infer(target: str, rows: np.ndarray) -> triton.InferResult:  # type: ignore[name-defined]
    inputs = [triton.InferInput("x", list(rows.shape), "FP64")]
    inputs[0].set_data_from_numpy(rows)
    outputs = [triton.InferRequestedOutput("predict_proba")]
    async with triton.InferenceServerClient(target) as client:
        return await client.infer("scorer", inputs, outputs=outputs, request_id="req-1")


@pytest.mark.timeout(180)
async def test_mlserver_through_the_proxy(server: str) -> None:
    rows = np.array([[1.0, 2.0, 0.0], [-1.0, -3.0, 0.5]])
    hook = RecordingHook()
    proxy = GrpcProxy(server, hook)
    port = await proxy.start("127.0.0.1", 0)
    try:
        direct = await infer(server, rows)
        proxied = await infer(f"127.0.0.1:{port}", rows)
        assert proxied.get_response() == direct.get_response()
        proba = proxied.as_numpy("predict_proba")
        assert proba.shape == (2, 2) and proba[0, 1] > 0.5 > proba[1, 1]
        call, answer = hook.answers[0]
        assert call.model_name == "scorer"
        assert request_document(call.message)["inputs"][0]["data"] == rows.flatten().tolist()
        output = answer["outputs"][0]
        assert (output["name"], output["shape"]) == ("predict_proba", [2, 2])
        assert output["data"] == pytest.approx(proba.flatten().tolist())
        hook.refuse_request = Refuse(grpc.StatusCode.UNAVAILABLE, "breaker open", retry_after=30)
        with pytest.raises(Exception, match="breaker open"):
            await infer(f"127.0.0.1:{port}", rows)
    finally:
        await proxy.stop(1.0)
