"""Redis stopped mid-run: the proxy keeps serving, counts state failures, and recovers."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

from guardproxy.testing import RunningProxy, running_proxy

from .test_fairness_compas import AUTH, compas_settings, scoring_upstream


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private redis-server that a test may stop and start again on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([*args, "--daemonize", "no"], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        for _ in range(100):
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)
            self.process = None


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


async def predict(session: aiohttp.ClientSession, proxy: RunningProxy, rid: str) -> None:
    headers = {"X-Group": "Caucasian", "X-Request-Id": rid}
    async with session.post(f"{proxy.url}/score", json={"scores": [0.7]}, headers=headers) as r:
        assert r.status == 200 and r.headers["X-Guard-Decision"] == "1"
    await proxy.runtime.worker.flush()


async def label(session: aiohttp.ClientSession, proxy: RunningProxy, rid: str) -> int:
    url = f"{proxy.url}/guardproxy/v1/feedback"
    async with session.post(url, json={"request_id": rid, "label": 1}, headers=AUTH) as r:
        return r.status


async def test_redis_outage_and_recovery(tmp_path: Path, private_redis: RedisServer) -> None:
    state = f"redis://127.0.0.1:{private_redis.port}/0"
    async with scoring_upstream() as upstream, aiohttp.ClientSession() as session:
        async with running_proxy(compas_settings(upstream, tmp_path, state=state)) as proxy:
            engine = proxy.runtime.engine
            await predict(session, proxy, "before")
            assert engine.recorded == 1 and await label(session, proxy, "before") == 200
            private_redis.stop()
            for i in range(3):
                await predict(session, proxy, f"down{i}")
            errors = engine.state_errors
            assert errors >= 3 and engine.recorded == 1
            assert await label(session, proxy, "down0") == 503
            private_redis.start()
            for i in range(20):
                await predict(session, proxy, f"up{i}")
                if engine.recorded > 1:
                    break
                await asyncio.sleep(0.05)
            assert engine.recorded == 2 and engine.last_error is None
            assert await label(session, proxy, f"up{i}") == 200
            async with session.get(f"{proxy.admin_url}/status") as r:
                status = await r.json()
    assert status["fairness"]["state"]["state_errors"] >= errors
    assert status["requests"]["guarded"] == 1 + 3 + (i + 1)
