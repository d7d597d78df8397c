"""A real MLServer (mlserver-sklearn) serving a scikit-learn model, reached through the proxy."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import joblib
import numpy as np
import psutil
import pytest
import tritonclient.grpc.aio as triton
from grpc import aio
from sklearn.linear_model import LogisticRegression

from guardproxy.grpc import GrpcProxy, Refuse
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb

from .conftest import RecordingHook

pytestmark = pytest.mark.slow


def write_model(folder: Path) -> None:
    """A logistic regression on 3 features, with MLServer's settings (every port from the OS)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3))
    model = LogisticRegression().fit(x, (x[:, 0] + x[:, 1] > 0).astype(int))
    (folder / "scorer").mkdir()
    joblib.dump(model, folder / "scorer" / "model.joblib")
    settings = {"name": "scorer", "implementation": "mlserver_sklearn.SKLearnModel"}
    settings["parameters"] = {"uri": "./model.joblib", "version": "v1"}  # type: ignore[assignment]
    (folder / "scorer" / "model-settings.json").write_text(json.dumps(settings))
    ports = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "parallel_workers": 0}
    (folder / "settings.json").write_text(json.dumps(ports))


async def grpc_port(pid: int) -> int | None:
    """The child's listening port that answers OIP ServerLive (MLServer logs only '0')."""
    ports = {
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    for port in sorted(ports):
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            live = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerLive",
                pb.ServerLiveRequest.SerializeToString,
                pb.ServerLiveResponse.FromString,
            )
            try:
                if (await live(pb.ServerLiveRequest(), timeout=1.0)).live:
                    return port
            except aio.AioRpcError:
                continue
    return None


@pytest.fixture
async def mlserver(tmp_path: Path) -> AsyncIterator[str]:
    write_model(tmp_path)
    command = Path(sys.executable).with_name("mlserver")
    process = await asyncio.create_subprocess_exec(
        str(command), "start", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        log = b""
        while b"gRPC server running" not in log:
            line = await asyncio.wait_for(process.stdout.readline(), 90)
            assert line, f"mlserver exited: {log.decode(errors='replace')[-2000:]}"
            log += line
        drain = asyncio.create_task(process.stdout.read())  # keep the pipe from filling
        port = await grpc_port(process.pid)
        assert port is not None
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()
        if "drain" in locals():
            drain.cancel()


async def infer(target: str, rows: np.ndarray) -> triton.InferResult:  # type: ignore[name-defined]
    inputs = [triton.InferInput("x", list(rows.shape), "FP64")]
    inputs[0].set_data_from_numpy(rows)
    outputs = [triton.InferRequestedOutput("predict_proba")]
    async with triton.InferenceServerClient(target) as client:
        return await client.infer("scorer", inputs, outputs=outputs, request_id="req-1")


@pytest.mark.timeout(180)
async def test_mlserver_through_the_proxy(mlserver: str) -> None:
    rows = np.array([[1.0, 2.0, 0.0], [-1.0, -3.0, 0.5]])
    hook = RecordingHook()
    proxy = GrpcProxy(mlserver, hook)
    port = await proxy.start("127.0.0.1", 0)
    try:
        direct = await infer(mlserver, rows)
        proxied = await infer(f"127.0.0.1:{port}", rows)
        assert proxied.get_response() == direct.get_response()
        proba = proxied.as_numpy("predict_proba")
        assert proba.shape == (2, 2) and proba[0, 1] > 0.5 > proba[1, 1]
        call, answer = hook.answers[0]
        assert call.model_name == "scorer"
        assert call.request["inputs"][0]["data"] == rows.flatten().tolist()
        output = answer["outputs"][0]
        assert (output["name"], output["shape"]) == ("predict_proba", [2, 2])
        assert output["data"] == pytest.approx(proba.flatten().tolist())
        hook.refuse_request = Refuse(grpc.StatusCode.UNAVAILABLE, "breaker open", retry_after=30)
        with pytest.raises(Exception, match="breaker open"):
            await infer(f"127.0.0.1:{port}", rows)
    finally:
        await proxy.stop(1.0)
