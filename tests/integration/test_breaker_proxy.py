"""The breaker in the running proxy: upstream health trips it, half-open caps probes under
concurrency, fallback reroutes while open, and operators force it through the admin port."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import build_model_app, v2_request
from guardproxy.testing import RunningProxy, proxy_settings, running_proxy, serving

ROWS = list(adult_rows())[:20]
INFER = "/v2/models/adult/infer"
ADMIN = {"Authorization": "Bearer admin-secret"}
POLICY = """
region: default
groups: {attribute: {input: sex}, values: [Female, Male]}
breaker:
  trip: [{when: upstream.error_rate, above: 0.5, windows: 1}]
  open: OPEN
  cooldown: 0.3s
  window: 0.2s
  half_open: {probes: 5, close_after_windows: 1}
"""


class Model:
    """The demo model server, counting calls; it answers 500 while `failing`."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False
        self.gate: asyncio.Event | None = None
        self.app = build_model_app()
        self.app.middlewares.append(self._count)

    @web.middleware
    async def _count(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()  # hold answers so every request is admitted before any ends
        if self.failing:
            return web.json_response({"error": "model crashed"}, status=500)
        return await handler(request)


@asynccontextmanager
async def setup(tmp_path: Path, open_spec: str) -> AsyncIterator[tuple[RunningProxy, Model, Model]]:
    """Primary and fallback model servers; a proxy whose breaker falls back or rejects."""
    primary, fallback = Model(), Model()
    async with serving(primary.app) as primary_url, serving(fallback.app) as fallback_url:
        policies = tmp_path / "policies"
        policies.mkdir()
        spec = open_spec.replace("FALLBACK", fallback_url)
        (policies / "default.yaml").write_text(POLICY.replace("OPEN", spec))
        settings = proxy_settings(primary_url, policies=policies, samples_dir=tmp_path / "s")
        async with running_proxy(settings) as proxy:
            proxy.runtime.breakers.interval = 0.05
            yield proxy, primary, fallback


async def infer(session: aiohttp.ClientSession, proxy: RunningProxy) -> tuple[int, Any, Any]:
    """One inference request of two rows: (status, headers, JSON body)."""
    async with session.post(proxy.url + INFER, json=v2_request(ROWS[:2])) as response:
        return response.status, response.headers.copy(), await response.json()


async def until(check: Callable[[], bool], seconds: float = 3.0) -> None:
    """Wait until check() holds (the breaker ticker runs in the background)."""
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def breaker_state(proxy: RunningProxy) -> str:
    """The default region's breaker state."""
    breaker = proxy.runtime.breakers.breaker("default")
    assert breaker is not None
    return breaker.state_name


async def test_500s_trip_error_rate_and_half_open_admits_exactly_the_probe_cap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with setup(tmp_path, "{action: reject}") as (proxy, model, _):
        unlimited = aiohttp.TCPConnector(limit=0)  # all 200 requests in flight at once
        async with aiohttp.ClientSession(connector=unlimited) as session:
            model.failing = True
            with caplog.at_level(logging.INFO, "guardproxy.breaker"):
                assert {(await infer(session, proxy))[0] for _ in range(4)} == {500}
                await until(lambda: breaker_state(proxy) == "open")
            status, headers, body = await infer(session, proxy)
            assert status == 503 and "upstream.error_rate>0.5x1 (1)" in body["reason"]
            model.failing, model.calls, model.gate = False, 0, asyncio.Event()
            await asyncio.sleep(0.35)  # the cooldown
            pending = [asyncio.ensure_future(infer(session, proxy)) for _ in range(200)]
            await until(lambda: sum(f.done() for f in pending) == 195)
            model.gate.set()
            answers = await asyncio.gather(*pending)
            statuses = [a[0] for a in answers]
            assert model.calls == 5 and statuses.count(200) == 5 and statuses.count(503) == 195
            assert {a[1]["X-Guard-Breaker"] for a in answers if a[0] == 200} == {"half_open"}
            await until(lambda: breaker_state(proxy) == "closed")
            status, headers, _ = await infer(session, proxy)
            assert status == 200 and "X-Guard-Breaker" not in headers
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy.admin_url + "/status") as response:
                report = (await response.json())["breakers"]
            async with session.get(proxy.admin_url + "/metrics") as response:
                metrics = await response.text()
    lines = [r.getMessage() for r in caplog.records if r.name == "guardproxy.breaker"]
    assert lines[0].startswith("breaker default: closed -> open (tripped: upstream.error_rate")
    assert "upstream.error_rate=1" in lines[0]
    assert report["transitions"] == {"default:open": 1, "default:half_open": 1, "default:closed": 1}
    region = report["regions"]["default"]
    assert region["state"] == "closed" and region["since"] and region["reason"]
    assert "upstream.error_rate" in region["last_window"]
    counted = [line for line in metrics.splitlines() if "breaker_transitions_total{" in line]
    assert any('region="default",to="open"} 1.0' in line for line in counted)


async def test_fallback_while_forced_open_and_back_to_primary_when_closed(tmp_path: Path) -> None:
    spec = "{action: fallback, upstream: 'FALLBACK'}"
    async with setup(tmp_path, spec) as (proxy, primary, fallback):
        async with aiohttp.ClientSession() as session:
            assert (await infer(session, proxy))[0] == 200 and primary.calls == 1
            forced = await force(
                session, proxy, "default", {"state": "forced_open", "reason": "canary"}
            )
            assert forced == (200, "forced_open")
            status, headers, body = await infer(session, proxy)
            assert status == 200 and len(body["outputs"][0]["data"]) == 2
            assert headers["X-Guard-Breaker"] == "forced_open"
            assert headers["X-Guard-Upstream"] == "fallback"
            assert (primary.calls, fallback.calls) == (1, 1)
            assert await force(session, proxy, "default", {"state": "closed", "reason": "ok"}) == (
                200, "closed",
            )  # fmt: skip
            status, headers, _ = await infer(session, proxy)
            assert status == 200 and "X-Guard-Upstream" not in headers
            assert (primary.calls, fallback.calls) == (2, 1)


async def force(
    session: aiohttp.ClientSession, proxy: RunningProxy, region: str, body: Any, token: bool = True
) -> tuple[int, Any]:
    """POST /admin/breaker/{region}; (status, state or error)."""
    url = f"{proxy.admin_url}/admin/breaker/{region}"
    async with session.post(url, json=body, headers=ADMIN if token else {}) as response:
        doc = await response.json()
        return response.status, doc.get("state", doc.get("error"))


async def test_admin_breaker_endpoint_checks_token_region_and_state(tmp_path: Path) -> None:
    async with setup(tmp_path, "{action: reject}") as (proxy, _, _):
        async with aiohttp.ClientSession() as session:
            closed = {"state": "closed", "reason": "x"}
            assert (await force(session, proxy, "default", closed, token=False))[0] == 401
            assert (await force(session, proxy, "mars", closed))[0] == 404
            bad = await force(session, proxy, "default", {"state": "half_open"})
            assert bad[0] == 400 and "forced_open, closed or disabled" in bad[1]
            assert await force(session, proxy, "default", {"state": "disabled"}) == (
                200,
                "disabled",
            )
            status, headers, _ = await infer(session, proxy)
    assert status == 200 and headers["X-Guard-Breaker"] == "disabled"
