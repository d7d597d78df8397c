"""A real MLServer (mlserver-sklearn) serving a scikit-learn model, on ports the OS chose."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import joblib
import numpy as np
import psutil
from grpc import aio
from sklearn.linear_model import LogisticRegression

from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb


@dataclass(frozen=True)
class MLServer:
    """Where the running MLServer answers."""

    grpc: str  # HOST:PORT
    http: str  # base URL


def write_model(folder: Path) -> None:
    """A logistic regression on 3 features, with MLServer's settings (every port from the OS)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3))
    model = LogisticRegression().fit(x, (x[:, 0] + x[:, 1] > 0).astype(int))
    (folder / "scorer").mkdir(parents=True)
    joblib.dump(model, folder / "scorer" / "model.joblib")
    settings = {"name": "scorer", "implementation": "mlserver_sklearn.SKLearnModel"}
    settings["parameters"] = {"uri": "./model.joblib", "version": "v1"}  # type: ignore[assignment]
    (folder / "scorer" / "model-settings.json").write_text(json.dumps(settings))
    ports = {"http_port": 0, "grpc_port": 0, "metrics_port": 0, "parallel_workers": 0}
    (folder / "settings.json").write_text(json.dumps(ports))


def listening(pid: int) -> list[int]:
    """The child's listening TCP ports (MLServer logs only '0' for ports the OS chose)."""
    return sorted(
        {
            c.laddr.port
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        }
    )


async def grpc_port(ports: list[int]) -> int | None:
    """The port that answers OIP ServerLive."""
    for port in ports:
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


async def http_port(ports: list[int]) -> int | None:
    """The port that answers the OIP model-ready endpoint over HTTP."""
    async with aiohttp.ClientSession() as session:
        for port in ports:
            try:
                url = f"http://127.0.0.1:{port}/v2/models/scorer/ready"
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return port
            except (aiohttp.ClientError, TimeoutError):
                continue
    return None


@asynccontextmanager
async def mlserver(folder: Path) -> AsyncIterator[MLServer]:
    """`mlserver start` on the model written into folder, until the block ends."""
    write_model(folder)
    command = Path(sys.executable).with_name("mlserver")
    process = await asyncio.create_subprocess_exec(
        str(command), "start", str(folder),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        log = b""
        while b"gRPC server running" not in log or b"Uvicorn running" not in log:
            line = await asyncio.wait_for(process.stdout.readline(), 90)
            assert line, f"mlserver exited: {log.decode(errors='replace')[-2000:]}"
            log += line
        drain = asyncio.create_task(process.stdout.read())  # keep the pipe from filling
        ports = listening(process.pid)
        grpc, http = await grpc_port(ports), await http_port(ports)
        assert grpc is not None and http is not None, ports
        yield MLServer(f"127.0.0.1:{grpc}", f"http://127.0.0.1:{http}")
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()
        if drain is not None:
            drain.cancel()
