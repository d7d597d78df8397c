"""A real Prometheus server scrapes the admin port and answers queries for our counters."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from itertools import islice
from pathlib import Path

import aiohttp
import pytest

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import build_model_app
from guardproxy.testing import RunningProxy, proxy_settings, running_proxy, serving

from .test_otlp import clean_otel_env, guarded, send_batches

__all__ = ["clean_otel_env", "guarded"]  # fixtures shared with the OTLP tests

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
pytestmark = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(), reason="the prometheus server binary is not installed"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def proxy(guarded: None) -> AsyncIterator[RunningProxy]:
    """A guarded proxy in front of the demo model server."""
    async with serving(build_model_app()) as model_url:
        async with running_proxy(proxy_settings(model_url)) as running:
            yield running


@pytest.fixture
def prometheus(proxy: RunningProxy, tmp_path: Path) -> Iterator[str]:
    """Prometheus scraping the proxy's admin port every second; yields its URL."""
    target = proxy.admin_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: guardproxy\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


async def query(client: aiohttp.ClientSession, url: str, expr: str) -> dict[tuple[str, str], float]:
    """An instant query: {(group, outcome): value}."""
    try:
        async with client.get(f"{url}/api/v1/query", params={"query": expr}) as response:
            body = await response.json()
    except aiohttp.ClientError:
        return {}
    return {
        (r["metric"]["group"], r["metric"]["outcome"]): float(r["value"][1])
        for r in body.get("data", {}).get("result", [])
    }


async def test_prometheus_scrapes_the_decision_counters(
    proxy: RunningProxy, prometheus: str
) -> None:
    rows = list(islice(adult_rows(), 10))
    async with aiohttp.ClientSession() as client:
        sent = await send_batches(client, proxy.url, rows, size=2)
        expected = {key: float(count) for key, count in sent.items()}
        found: dict[tuple[str, str], float] = {}
        for _ in range(60):  # at most ~12 s: Prometheus starts, then scrapes every second
            found = await query(client, prometheus, 'guardproxy_decisions_total{job="guardproxy"}')
            if found == expected:
                break
            await asyncio.sleep(0.2)
        assert found == expected
