"""Fixtures of the integration tests: telemetry receivers, a guarded demo model, Prometheus."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from guardproxy.demo.server import build_model_app
from guardproxy.testing import (
    OtlpReceiver,
    RunningProxy,
    otlp_receiver,
    proxy_settings,
    running_proxy,
    serving,
)
from tests.children import listening_port
from tests.integration.traffic import PROMETHEUS


@pytest.fixture(autouse=True)
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No OTEL_* from the machine leaks into these tests."""
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    yield


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    """A real OTLP/HTTP receiver on a free port."""
    async with otlp_receiver() as running:
        yield running


@pytest.fixture
async def model_proxy() -> AsyncIterator[RunningProxy]:
    """A guarded proxy in front of the demo model server."""
    async with serving(build_model_app()) as model_url:
        async with running_proxy(proxy_settings(model_url)) as running:
            yield running


@pytest.fixture
async def prometheus(model_proxy: RunningProxy, tmp_path: Path) -> AsyncIterator[str]:
    """Prometheus scraping the proxy's admin port every second; yields its URL."""
    target = model_proxy.admin_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: guardproxy\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    process = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        "--web.listen-address=127.0.0.1:0",  # the port the OS picks, read back below
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{await listening_port(process.pid)}"
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
