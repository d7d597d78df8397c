"""The breaker in the running proxy: upstream health trips it, half-open caps probes under
concurrency, fallback reroutes while open, and operators force it through the admin port.
Two models behind one upstream: each guarded path has its own breaker (up to the cap)."""

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
  min_calls: 1
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


def breaker_state(proxy: RunningProxy, route: str = INFER) -> str:
    """The state of the default region's breaker of one path."""
    breaker = proxy.runtime.breakers.breaker("default", route)
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
    assert lines[0].startswith(f"breaker default {INFER}: closed -> open (tripped: upstream.error")
    assert "upstream.error_rate=1" in lines[0]
    assert report["transitions"] == {"default:open": 1, "default:half_open": 1, "default:closed": 1}
    region = report["regions"]["default"]
    route = region["routes"][INFER]
    assert region["state"] == route["state"] == "closed" and route["since"] and route["reason"]
    assert route["route"] == INFER and "upstream.error_rate" in route["last_window"]
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
    session: aiohttp.ClientSession,
    proxy: RunningProxy,
    region: str,
    body: Any,
    token: bool = True,
    route: str | None = None,
) -> tuple[int, Any]:
    """POST /admin/breaker/{region}[?route=PATH]; (status, state or error)."""
    url = f"{proxy.admin_url}/admin/breaker/{region}"
    params = {"route": route} if route else {}
    headers = ADMIN if token else {}
    async with session.post(url, json=body, headers=headers, params=params) as response:
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


FRAUD, CREDIT = "/v2/models/fraud/infer", "/v2/models/credit/infer"
LISTED, GLOB = f'["{FRAUD}", "{CREDIT}"]', '["/v2/models/*/infer"]'
TWO_MODELS = """
region: default
model: {routes: ROUTES}
groups: {attribute: {input: sex}, values: [Female, Male]}
drift: {reference: {warmup: 10}, window: 10, signals: [score]}
breaker:
  trip: [{when: upstream.error_rate, above: 0.5, windows: 1}, DRIFT]
  open: {action: reject}
  cooldown: 60s
  window: 0.2s
  min_calls: 1
"""
NEVER = "{when: drift.score.psi, above: 1000, windows: 1}"


class Models:
    """One upstream app serving two models (credit and fraud); paths in `failing` answer 500."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.calls: dict[str, int] = {}
        self.app = build_model_app("credit")
        handler = next(r.handler for r in self.app.router.routes() if r.method == "POST")
        self.app.router.add_post(FRAUD, handler)
        self.app.middlewares.append(self._fail)

    @web.middleware
    async def _fail(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.calls[request.path] = self.calls.get(request.path, 0) + 1
        if request.path in self.failing:
            return web.json_response({"error": "model crashed"}, status=500)
        return await handler(request)


@asynccontextmanager
async def two_models(
    tmp_path: Path, routes: str = LISTED, drift: str = NEVER
) -> AsyncIterator[tuple[RunningProxy, Models]]:
    """Both models behind one upstream app; a proxy guarding them under one policy."""
    models = Models()
    async with serving(models.app) as url:
        policies = tmp_path / "policies"
        policies.mkdir()
        policy = TWO_MODELS.replace("ROUTES", routes).replace("DRIFT", drift)
        (policies / "default.yaml").write_text(policy)
        settings = proxy_settings(url, policies=policies, samples_dir=tmp_path / "s")
        async with running_proxy(settings) as proxy:
            proxy.runtime.breakers.interval = 0.05
            yield proxy, models


async def ask(
    session: aiohttp.ClientSession, proxy: RunningProxy, path: str, rows: int = 2
) -> tuple[int, Any]:
    """One inference request to a path: (status, headers)."""
    async with session.post(proxy.url + path, json=v2_request(ROWS[:rows])) as response:
        await response.read()
        return response.status, response.headers.copy()


async def breakers_report(session: aiohttp.ClientSession, proxy: RunningProxy) -> Any:
    """The default region's breakers as /status reports them."""
    async with session.get(proxy.admin_url + "/status") as response:
        return (await response.json())["breakers"]["regions"]["default"]


@pytest.mark.parametrize("routes", [LISTED, GLOB])
async def test_a_failing_model_opens_its_own_breaker_and_the_other_keeps_serving(
    tmp_path: Path, routes: str
) -> None:
    async with two_models(tmp_path, routes) as (proxy, models):
        models.failing.add(FRAUD)
        async with aiohttp.ClientSession() as session:
            for _ in range(4):
                assert [(await ask(session, proxy, p))[0] for p in (FRAUD, CREDIT)] == [500, 200]
            await until(lambda: breaker_state(proxy, FRAUD) == "open")
            fraud = await ask(session, proxy, FRAUD)
            credit = [await ask(session, proxy, CREDIT) for _ in range(5)]
            await until(lambda: "upstream.error_rate" in last_window(proxy, CREDIT))
            report = await breakers_report(session, proxy)
    assert fraud[0] == 503 and fraud[1]["X-Guard-Breaker"] == "open"
    assert all(status == 200 and "X-Guard-Breaker" not in h for status, h in credit)
    assert models.calls == {FRAUD: 4, CREDIT: 9}
    assert report["state"] == "open" and report["overflow"] == 0
    assert {r: b["state"] for r, b in report["routes"].items()} == {
        "*": "closed", CREDIT: "closed", FRAUD: "open",
    }  # fmt: skip
    assert report["routes"][CREDIT]["last_window"]["upstream.error_rate"] == 0


def last_window(proxy: RunningProxy, route: str) -> dict[str, float]:
    """The last window values one path's breaker has seen."""
    breaker = proxy.runtime.breakers.breaker("default", route)
    return dict(breaker.last_values) if breaker is not None else {}


async def test_a_drift_window_reaches_the_breaker_of_every_model(tmp_path: Path) -> None:
    always = "{when: drift.score.psi, above: 0, windows: 1}"
    async with two_models(tmp_path, GLOB, always) as (proxy, _):
        async with aiohttp.ClientSession() as session:
            assert (await ask(session, proxy, FRAUD))[0] == 200  # the fraud breaker exists
            older = [{**row, "age": str(int(row["age"]) + 30)} for row in ROWS[10:20]]
            for body in (v2_request(ROWS[2:10]), v2_request(older)):
                async with session.post(proxy.url + CREDIT, json=body) as response:
                    assert response.status == 200
            await proxy.runtime.worker.flush()
            answers = [await ask(session, proxy, p) for p in (FRAUD, CREDIT)]
    fraud, credit = (last_window(proxy, route).get("drift.score.psi") for route in (FRAUD, CREDIT))
    assert fraud is not None and fraud > 0 and fraud == credit
    assert [(s, h["X-Guard-Breaker"]) for s, h in answers] == [(503, "open"), (503, "open")]


async def test_admin_route_parameter_forces_one_model_only(tmp_path: Path) -> None:
    async with two_models(tmp_path) as (proxy, _):
        async with aiohttp.ClientSession() as session:
            body = {"state": "forced_open", "reason": "bad fraud release"}
            forced = await force(session, proxy, "default", body, route=FRAUD)
            one = [await ask(session, proxy, p) for p in (FRAUD, CREDIT)]
            other = "/v2/models/other/infer"
            missing = await force(session, proxy, "default", body, route=other)
            assert (await force(session, proxy, "default", body))[1] == "forced_open"
            both = [(await ask(session, proxy, p))[0] for p in (FRAUD, CREDIT)]
            await force(session, proxy, "default", {"state": "closed", "reason": "fixed"})
            after = [(await ask(session, proxy, p))[0] for p in (FRAUD, CREDIT)]
    assert forced == (200, "forced_open")
    assert one[0][0] == 503 and one[0][1]["X-Guard-Breaker"] == "forced_open"
    assert one[1][0] == 200 and "X-Guard-Breaker" not in one[1][1]
    assert missing == (404, f"region 'default' does not guard '{other}'")
    assert both == [503, 503] and after == [200, 200]


async def test_paths_beyond_the_cap_share_the_region_wide_breaker(tmp_path: Path) -> None:
    async with two_models(tmp_path, GLOB) as (proxy, _):
        cap = proxy.runtime.breakers.route_cap
        async with aiohttp.ClientSession() as session:
            for i in range(cap + 2):  # unknown models: the upstream answers 404
                assert (await ask(session, proxy, f"/v2/models/m{i}/infer"))[0] == 404
            assert (await ask(session, proxy, CREDIT))[0] == 200
            report = await breakers_report(session, proxy)
    assert cap == 64 and len(report["routes"]) == cap + 1  # and the shared one
    assert report["overflow"] == 3 and CREDIT not in report["routes"]
    assert proxy.runtime.breakers.breaker("default", CREDIT) is None
