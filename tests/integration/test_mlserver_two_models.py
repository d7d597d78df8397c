"""Two models on one real MLServer, guarded by the MLServer example's own policies.

The README's "Two models on one MLServer" walk-through, as a test: guardproxy in front of
MLServer (mlserver-sklearn) serving income-v1 and income-v2, each with its threshold,
fairness counters and breaker, ranked side by side in the fleet view.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from guardproxy.demo.mlserver import infer_request, write_repository
from guardproxy.demo.model import adult_rows
from guardproxy.testing import RunningProxy, proxy_settings, running_proxy

pytestmark = pytest.mark.slow
POLICIES = Path(__file__).resolve().parents[2] / "k8s" / "examples" / "mlserver" / "policies"
ROWS = list(adult_rows())[:40]


async def ready_port(pid: int) -> int | None:
    """MLServer's HTTP port (it logs only '0' for ports the OS chose)."""
    ports = sorted(
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    )
    async with aiohttp.ClientSession() as session:
        for port in ports:
            url = f"http://127.0.0.1:{port}/v2/models/income-v2/ready"
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return port
            except (aiohttp.ClientError, TimeoutError):
                continue
    return None


@pytest.fixture
async def mlserver(tmp_path: Path) -> AsyncIterator[str]:
    """`mlserver start` on the two income models, ports from the OS; its base URL."""
    ports = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}  # the rest as the README's
    write_repository(tmp_path, ports)
    command = Path(sys.executable).with_name("mlserver")
    process = await asyncio.create_subprocess_exec(
        str(command), "start", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    drain = None
    try:
        log = b""
        while b"Uvicorn running" not in log:
            line = await asyncio.wait_for(process.stdout.readline(), 90)
            assert line, f"mlserver exited: {log.decode(errors='replace')[-2000:]}"
            log += line
        drain = asyncio.create_task(process.stdout.read())
        port = None
        for _ in range(100):  # models load after the server listens
            port = await ready_port(process.pid)
            if port is not None:
                break
            await asyncio.sleep(0.2)
        assert port is not None
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        await process.wait()
        if drain is not None:
            drain.cancel()


async def infer(proxy: RunningProxy, model: str, rows: list[dict[str, Any]]) -> Any:
    async with aiohttp.ClientSession() as session:
        url = f"{proxy.url}/v2/models/{model}/infer"
        async with session.post(url, json=infer_request(rows)) as r:
            return r.status, r.headers.copy(), await r.json()


async def test_each_model_is_guarded_by_its_own_policy(mlserver: str, tmp_path: Path) -> None:
    settings = proxy_settings(mlserver, policies=POLICIES, samples_dir=tmp_path / "samples")
    async with running_proxy(settings) as proxy:
        answers = {m: await infer(proxy, m, ROWS) for m in ("income-v1", "income-v2")}
        await proxy.runtime.worker.flush()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{proxy.admin_url}/status/models") as r:
                fleet = await r.json()
    for model, threshold in (("income-v1", 0.5), ("income-v2", 0.55)):
        status, headers, body = answers[model]
        assert status == 200 and headers["X-Guard-Model"] == model, body
        proba = next(o for o in body["outputs"] if o["name"] == "predict_proba")["data"]
        scores = proba[1::2]  # column 1 of [N, 2]: P(income > 50K)
        decisions = [int(s >= threshold) for s in scores]
        assert headers["X-Guard-Decision"] == ",".join(map(str, decisions))
        assert set(headers["X-Guard-Threshold"].split(",")) == {str(threshold)}
    assert {m["model"] for m in fleet["models"]} == {"income-v1", "income-v2"}
    assert {m["version"] for m in fleet["models"]} == {"1"}
    print(json.dumps([(m["model"], m["outcomes"]["recent"]) for m in fleet["models"]]))
