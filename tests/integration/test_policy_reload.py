"""A ConfigMap update under live traffic: swapped whole, within the poll interval, never mixed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import build_model_app, v2_request
from guardproxy.testing import eventually, proxy_settings, running_proxy, serving
from tests.policy.kubelet import atomic_write

POLICIES = Path(__file__).parents[2] / "policies"
POLL = 0.2
SG_OLD = "region: sg\nextends: default\ndecision: {per_group: {Female: 0.45}}\n"
SG_NEW = "region: sg\nextends: default\ndecision: {per_group: {Female: 0.30}}\n"
SG_BROKEN = "region: sg\nextends: default\nsampling: {rate: 2}\n"


async def test_kubelet_swap_under_traffic(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    mount = tmp_path / "policies"
    default = (POLICIES / "default.yaml").read_text()
    atomic_write(mount, {"default.yaml": default, "sg.yaml": SG_OLD})
    female = next(r for r in adult_rows() if r["sex"] == "Female")
    body = v2_request([female])
    seen: list[tuple[float, int, str, str]] = []
    stop = asyncio.Event()

    async def traffic(url: str) -> None:
        while not stop.is_set():
            headers = {"X-Region": "sg"}
            async with client.post(f"{url}/v2/models/adult/infer", json=body, headers=headers) as r:
                await r.read()
                seen.append(
                    (time.monotonic(), r.status, r.headers["X-Guard-Policy"],
                     r.headers["X-Guard-Threshold"])
                )  # fmt: skip

    async with serving(build_model_app()) as model_url:
        settings = proxy_settings(
            model_url, policies=mount, poll_interval=POLL, trust_region_header="X-Region"
        )
        async with running_proxy(settings) as proxy:
            loads = [asyncio.create_task(traffic(proxy.url)) for _ in range(4)]

            async def answered(more: int) -> None:  # traffic keeps flowing meanwhile
                count = len(seen)
                await eventually(lambda: len(seen) >= count + more)

            await answered(20)
            old_version = seen[-1][2]
            swapped_at = time.monotonic()
            atomic_write(mount, {"default.yaml": default, "sg.yaml": SG_NEW})
            await eventually(lambda: seen[-1][2] != old_version)
            await answered(20)
            atomic_write(mount, {"default.yaml": default, "sg.yaml": SG_BROKEN})
            await eventually(lambda: proxy.runtime.store.reloads_failed == 1)
            await answered(20)
            stop.set()
            await asyncio.gather(*loads)
            async with client.get(f"{proxy.admin_url}/status") as response:
                status = (await response.json())["policies"]

    assert {s for _, s, _, _ in seen} == {200}
    thresholds_by_version: dict[str, set[str]] = {}
    for _, _, version, threshold in seen:
        thresholds_by_version.setdefault(version, set()).add(threshold)
    # exactly two policies served, each with its own threshold: never a mix
    assert thresholds_by_version == {
        old_version: {"0.45"},
        status["regions"]["sg"]["version"]: {"0.3"},
    }
    first_new = next(t for t, _, v, _ in seen if v != old_version)
    assert first_new - swapped_at < POLL + 0.5
    after = [v for t, _, v, _ in seen if t >= first_new]
    assert old_version not in after, "an old policy answered after the new one"
    assert status["reloads_failed"] == 1
    assert "sg.yaml:3" in status["last_error"][0]
