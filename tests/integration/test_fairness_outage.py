"""Redis stopped mid-run: the proxy keeps serving, counts state failures, and recovers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

from guardproxy.testing import RunningProxy, eventually, running_proxy
from tests.integration.compas import AUTH, compas_settings, scoring_upstream


class RedisServer:
    """A private redis-server on a unix socket (no port to race for), stopped and restarted."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The --state URL that reaches it."""
        return f"unix://{self.socket}?db=0"

    def start(self) -> None:
        args = ["redis-server", "--port", "0", "--unixsocket", str(self.socket)]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        client = redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=0.2)
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
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis.sock")
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
    state = private_redis.url
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
            sent: list[str] = []

            async def recorded_again() -> bool:
                sent.append(f"up{len(sent)}")
                await predict(session, proxy, sent[-1])
                return engine.recorded > 1

            await eventually(recorded_again, every=0.05)
            i = len(sent) - 1
            assert engine.recorded == 2 and engine.last_error is None
            assert await label(session, proxy, f"up{i}") == 200
            async with session.get(f"{proxy.admin_url}/status") as r:
                status = await r.json()
    assert status["fairness"]["state"]["state_errors"] >= errors
    assert status["requests"]["guarded"] == 1 + 3 + (i + 1)
