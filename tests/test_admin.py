"""The admin port: health, readiness, status, token checks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from guardproxy.testing import RunningProxy, eventually, proxy_settings, running_proxy
from tests.factories import observation


async def test_healthz_and_status(proxy: RunningProxy, client: aiohttp.ClientSession) -> None:
    async with client.get(f"{proxy.admin_url}/healthz") as response:
        assert response.status == 200
    async with client.get(f"{proxy.url}/echo") as response:
        assert response.status == 200
    async with client.get(f"{proxy.admin_url}/status") as response:
        status = await response.json()
    assert status["version"]
    assert status["uptime_seconds"] >= 0
    assert status["upstream"] == proxy.runtime.settings.upstream
    assert status["requests"]["requests"] == 1
    assert status["requests"]["in_flight"] == 0


async def test_readyz_follows_the_upstream(
    client: aiohttp.ClientSession, proxy: RunningProxy
) -> None:
    async with client.get(f"{proxy.admin_url}/readyz") as response:
        assert response.status == 200
    async with running_proxy(proxy_settings("http://127.0.0.1:9")) as down:
        async with client.get(f"{down.admin_url}/readyz") as response:
            body = await response.json()
    assert response.status == 503
    assert "not reachable" in body["problems"][0]


async def test_a_failing_monitor_degrades_readiness_and_shows_in_status(
    client: aiohttp.ClientSession, proxy: RunningProxy
) -> None:
    class Broken:
        def consume(self, batch: object) -> None:
            raise RuntimeError("boom")

    runtime = proxy.runtime
    runtime.worker.consumers.append(Broken())
    model = runtime.store.table.default.model("adult")
    assert model is not None
    runtime.worker.offer(observation(model))
    await runtime.worker.flush()
    async with client.get(f"{proxy.admin_url}/readyz") as response:
        ready = await response.json()
    async with client.get(f"{proxy.admin_url}/status") as response:
        status = await response.json()
    assert response.status == 200 and ready["status"] == "degraded"
    assert ready["degraded"] == ["monitor Broken failed 1 time(s)"]
    assert status["monitor"]["consumer_errors"] == {"Broken": 1}


async def test_admin_calls_need_the_token(
    proxy: RunningProxy, client: aiohttp.ClientSession
) -> None:
    async with client.post(f"{proxy.admin_url}/admin/reload") as response:
        assert response.status == 401
    bad = {"Authorization": "Bearer wrong"}
    async with client.post(f"{proxy.admin_url}/admin/reload", headers=bad) as response:
        assert response.status == 401
    good = {"Authorization": "Bearer admin-secret"}
    async with client.post(f"{proxy.admin_url}/admin/reload", headers=good) as response:
        assert response.status == 200
    # A token that is not UTF-8 is a wrong token, never a 500.
    host, port = proxy.admin_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /admin/reload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \xff\xfe\r\n"
                 b"Content-Length: 0\r\nConnection: close\r\n\r\n")  # fmt: skip
    assert (await reader.read()).startswith(b"HTTP/1.1 401")
    writer.close()


async def test_status_shows_what_each_region_and_model_is_for(
    tmp_path: Path, client: aiohttp.ClientSession, upstream_url: str
) -> None:
    (tmp_path / "default.yaml").write_text(
        "region: default\ndescription: Base policy.\n"
        "models: [{name: credit, description: 'Credit scoring, v3.'}, {name: fraud}]\n"
    )
    (tmp_path / "sg.yaml").write_text(
        "region: sg\nextends: default\ndescription: 'Singapore; PDPA.'\n"
    )
    async with running_proxy(proxy_settings(upstream_url, policies=tmp_path)) as proxy:
        async with client.get(f"{proxy.admin_url}/status") as response:
            regions = (await response.json())["policies"]["regions"]
    assert regions["default"]["description"] == "Base policy."
    assert regions["sg"]["description"] == "Singapore; PDPA."
    models = {"credit": "Credit scoring, v3.", "fraud": ""}
    assert regions["default"]["models"] == regions["sg"]["models"] == models


def secret_volume(directory: Path, tokens: dict[str, str], version: int) -> None:
    """Files as a Kubernetes Secret volume lays them out: a swap of the `..data` link."""
    data = directory / f"..v{version}"
    data.mkdir()
    for name, value in tokens.items():
        (data / name).write_text(value + "\n")
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(Path("..data") / name)
    (directory / "..data_tmp").symlink_to(data.name)
    (directory / "..data_tmp").rename(directory / "..data")


async def test_rotated_token_files_take_effect_without_a_restart(
    upstream_url: str, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    secret_volume(tmp_path, {"admin": "old-admin", "feedback": "old-feedback"}, 1)
    settings = proxy_settings(
        upstream_url, admin_token="old-admin", admin_token_file=str(tmp_path / "admin"),
        feedback_token="old-feedback", feedback_token_file=str(tmp_path / "feedback"),
    )  # fmt: skip

    async def status(url: str, token: str) -> int:
        async with client.post(url, headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status

    async def accepted(url: str, token: str) -> bool:
        return await status(url, token) != 401

    async with running_proxy(settings) as proxy:
        reload, feedback = f"{proxy.admin_url}/admin/reload", f"{proxy.url}/guardproxy/v1/feedback"
        assert await status(reload, "old-admin") == 200
        assert await status(feedback, "old-feedback") == 400  # let in; the body is empty
        secret_volume(tmp_path, {"admin": "new-admin", "feedback": "new-feedback"}, 2)
        await eventually(lambda: accepted(reload, "new-admin"))
        assert await status(reload, "old-admin") == 401  # a leaked token is out with its Secret
        await eventually(lambda: accepted(feedback, "new-feedback"))
        assert await status(feedback, "old-feedback") == 401
        assert proxy.runtime.masker().text("new-admin new-feedback") == "*** ***"


class Marked(Collector):
    """A large family (20,000 samples) that notes the loop's ticks when it starts and ends."""

    def __init__(self, ticks: list[int]) -> None:
        self.ticks, self.seen = ticks, []

    def describe(self) -> list[GaugeMetricFamily]:
        """The name only: registering does not collect."""
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The family; the encoder renders it between the two marks."""
        self.seen.append(len(self.ticks))
        family = self._family()
        for i in range(20_000):
            family.add_metric([str(i)], float(i))
        yield family
        self.seen.append(len(self.ticks))

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily("guardproxy_test_large", "A large family.", labels=["i"])


async def test_the_loop_keeps_running_while_metrics_render(
    client: aiohttp.ClientSession, proxy: RunningProxy
) -> None:
    # Rendered on the loop, a 300-model scrape held every request ~300 ms.
    ticks: list[int] = []
    marked = Marked(ticks)
    proxy.runtime.telemetry.registry.register(marked)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.001)
            ticks.append(1)

    task = asyncio.create_task(ticker())
    try:
        async with client.get(f"{proxy.admin_url}/metrics") as response:
            text = await response.text()
    finally:
        task.cancel()
    assert 'guardproxy_test_large{i="19999"} 19999.0' in text
    start, end = marked.seen
    assert end - start >= 3  # the loop ticked while the family was built and encoded
