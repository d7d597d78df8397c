"""The breaker in the running proxy: upstream health trips it, half-open caps probes under
concurrency, fallback reroutes while open, and operators force it through the admin port.
Two models behind one upstream: each model has its own breaker."""

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
from guardproxy.testing import (
    RunningProxy,
    eventually,
    proxy_settings,
    running_proxy,
    serving,
    write_policies,
)

ROWS = list(adult_rows())[:20]
INFER = "/v2/models/adult/infer"
ADMIN = {"Authorization": "Bearer admin-secret"}
POLICY = """
region: default
models: [{name: adult}]
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
        spec = open_spec.replace("FALLBACK", fallback_url)
        policy = POLICY.replace("OPEN", spec)
        policies = write_policies(tmp_path / "policies", {"default.yaml": policy})
        settings = proxy_settings(primary_url, policies=policies, samples_dir=tmp_path / "s")
        async with running_proxy(settings) as proxy:
            proxy.runtime.breakers.interval = 0.05
            yield proxy, primary, fallback


async def infer(session: aiohttp.ClientSession, proxy: RunningProxy) -> tuple[int, Any, Any]:
    """One inference request of two rows: (status, headers, JSON body)."""
    async with session.post(proxy.url + INFER, json=v2_request(ROWS[:2])) as response:
        return response.status, response.headers.copy(), await response.json()


def breaker_state(proxy: RunningProxy, model: str = "adult") -> str:
    """The state of one model's breaker in the default region."""
    breaker = proxy.runtime.breakers.breaker("default", model)
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
                await eventually(lambda: breaker_state(proxy) == "open")
            status, headers, body = await infer(session, proxy)
            assert status == 503 and "upstream.error_rate>0.5x1 (1)" in body["reason"]
            model.failing, model.calls, model.gate = False, 0, asyncio.Event()
            breaker = proxy.runtime.breakers.breaker("default", "adult")
            assert breaker is not None
            await eventually(breaker.cooldown_over)
            pending = [asyncio.ensure_future(infer(session, proxy)) for _ in range(200)]
            await eventually(lambda: sum(f.done() for f in pending) == 195)
            model.gate.set()
            answers = await asyncio.gather(*pending)
            statuses = [a[0] for a in answers]
            assert model.calls == 5 and statuses.count(200) == 5 and statuses.count(503) == 195
            assert {a[1]["X-Guard-Breaker"] for a in answers if a[0] == 200} == {"half_open"}
            await eventually(lambda: breaker_state(proxy) == "closed")
            status, headers, _ = await infer(session, proxy)
            assert status == 200 and "X-Guard-Breaker" not in headers
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy.admin_url + "/status") as response:
                report = (await response.json())["breakers"]
            async with session.get(proxy.admin_url + "/metrics") as response:
                metrics = await response.text()
    lines = [r.getMessage() for r in caplog.records if r.name == "guardproxy.breaker"]
    assert lines[0].startswith("breaker default/adult: closed -> open (tripped: upstream.error")
    assert "upstream.error_rate=1" in lines[0]
    assert report["transitions"] == {
        "default/adult:open": 1, "default/adult:half_open": 1, "default/adult:closed": 1
    }  # fmt: skip
    breaker = report["models"]["default/adult"]
    assert breaker["state"] == "closed" and breaker["since"] and breaker["reason"]
    assert breaker["model"] == "adult" and "upstream.error_rate" in breaker["last_window"]
    counted = [line for line in metrics.splitlines() if "breaker_transitions_total{" in line]
    assert any('model="adult"' in line and 'to="open"} 1.0' in line for line in counted), counted


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
    model: str | None = None,
) -> tuple[int, Any]:
    """POST /admin/breaker/{region}[?model=NAME]; (status, the one state or the error)."""
    url = f"{proxy.admin_url}/admin/breaker/{region}"
    params = {"model": model} if model else {}
    headers = ADMIN if token else {}
    async with session.post(url, json=body, headers=headers, params=params) as response:
        doc = await response.json()
        if "error" in doc:
            return response.status, doc["error"]
        return response.status, set(b["state"] for b in doc.values()).pop()


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
TWO_MODELS = """
region: default
models: [{name: fraud}, {name: credit}]
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
    tmp_path: Path, drift: str = NEVER
) -> AsyncIterator[tuple[RunningProxy, Models]]:
    """Both models behind one upstream app; a proxy guarding them under one policy."""
    models = Models()
    async with serving(models.app) as url:
        policies = write_policies(
            tmp_path / "policies", {"default.yaml": TWO_MODELS.replace("DRIFT", drift)}
        )
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
    """Every model's breaker as /status reports them."""
    async with session.get(proxy.admin_url + "/status") as response:
        return (await response.json())["breakers"]["models"]


async def test_a_failing_model_opens_its_own_breaker_and_the_other_keeps_serving(
    tmp_path: Path,
) -> None:
    async with two_models(tmp_path) as (proxy, models):
        models.failing.add(FRAUD)
        async with aiohttp.ClientSession() as session:
            for _ in range(4):
                assert [(await ask(session, proxy, p))[0] for p in (FRAUD, CREDIT)] == [500, 200]
            await eventually(lambda: breaker_state(proxy, "fraud") == "open")
            fraud = await ask(session, proxy, FRAUD)
            credit = [await ask(session, proxy, CREDIT) for _ in range(5)]
            await eventually(lambda: "upstream.error_rate" in last_window(proxy, "credit"))
            report = await breakers_report(session, proxy)
            unknown = await ask(session, proxy, "/v2/models/other/infer")
    assert fraud[0] == 503 and fraud[1]["X-Guard-Breaker"] == "open"
    assert fraud[1]["X-Guard-Model"] == "fraud"
    assert all(status == 200 and "X-Guard-Breaker" not in h for status, h in credit)
    assert models.calls == {FRAUD: 4, CREDIT: 9, "/v2/models/other/infer": 1}
    assert {name: b["state"] for name, b in report.items()} == {
        "default/credit": "closed", "default/fraud": "open",
    }  # fmt: skip
    assert report["default/credit"]["last_window"]["upstream.error_rate"] == 0
    assert unknown[0] == 404 and "X-Guard-Model" not in unknown[1]  # unguarded, passed through
    assert proxy.runtime.proxy.counts.unguarded >= 1


def last_window(proxy: RunningProxy, model: str) -> dict[str, float]:
    """The last window values one model's breaker has seen."""
    breaker = proxy.runtime.breakers.breaker("default", model)
    return dict(breaker.last_values) if breaker is not None else {}


async def test_a_drift_window_reaches_only_the_drifting_models_breaker(tmp_path: Path) -> None:
    always = "{when: drift.score.psi, above: 0, windows: 1}"
    async with two_models(tmp_path, always) as (proxy, _):
        async with aiohttp.ClientSession() as session:
            assert (await ask(session, proxy, FRAUD))[0] == 200
            older = [{**row, "age": str(int(row["age"]) + 30)} for row in ROWS[8:20]]
            # A request is at most one window's worth of rows over min_calls: ten here.
            for body in (v2_request(ROWS[:8]), v2_request(older[:6]), v2_request(older[6:])):
                async with session.post(proxy.url + CREDIT, json=body) as response:
                    assert response.status == 200
            await proxy.runtime.worker.flush()
            answers = [await ask(session, proxy, p) for p in (FRAUD, CREDIT)]
    assert last_window(proxy, "fraud").get("drift.score.psi") is None
    assert last_window(proxy, "credit")["drift.score.psi"] > 0
    assert answers[0][0] == 200 and "X-Guard-Breaker" not in answers[0][1]
    assert (answers[1][0], answers[1][1]["X-Guard-Breaker"]) == (503, "open")


async def test_admin_model_parameter_forces_one_model_only(tmp_path: Path) -> None:
    async with two_models(tmp_path) as (proxy, _):
        async with aiohttp.ClientSession() as session:
            body = {"state": "forced_open", "reason": "bad fraud release"}
            forced = await force(session, proxy, "default", body, model="fraud")
            one = [await ask(session, proxy, p) for p in (FRAUD, CREDIT)]
            missing = await force(session, proxy, "default", body, model="other")
            assert (await force(session, proxy, "default", body))[1] == "forced_open"
            both = [(await ask(session, proxy, p))[0] for p in (FRAUD, CREDIT)]
            await force(session, proxy, "default", {"state": "closed", "reason": "fixed"})
            after = [(await ask(session, proxy, p))[0] for p in (FRAUD, CREDIT)]
    assert forced == (200, "forced_open")
    assert one[0][0] == 503 and one[0][1]["X-Guard-Breaker"] == "forced_open"
    assert one[1][0] == 200 and "X-Guard-Breaker" not in one[1][1]
    assert missing == (404, "region 'default' has no model 'other'")
    assert both == [503, 503] and after == [200, 200]
