"""Drift trips the breaker in the running proxy: Adult traffic through the real demo model.

Warm-up and reference on unshifted rows, then shifted rows (everyone 10 years older, or a
single native country): the breaker opens within the configured windows, and clients see
the open action. Rows: the demo's bundled UCI Adult subset (CC BY 4.0).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from guardproxy.demo.model import FEATURES, adult_rows
from guardproxy.demo.server import build_model_app, v2_request
from guardproxy.testing import (
    RunningProxy,
    proxy_before,
)

ROWS = list(adult_rows())
INFER = "/v2/models/adult/infer"
COUNTRY = "native-country"
POLICY = """
region: default
models: [{name: adult}]
groups: {attribute: {input: sex}, values: [Female, Male]}
drift:
  reference: {warmup: 1000}
  window: 200
  signals: [score, {input: age}, {input: native-country, kind: categorical}]
breaker:
  trip:
    - {when: drift.age.psi, above: 0.25, windows: 2}
    - {when: drift.native-country.chi2, below: 0.001, windows: 2}
  open: {action: ACTION}
  cooldown: 60s
"""


@asynccontextmanager
async def guarded_model(tmp_path: Path, policy: str) -> AsyncIterator[RunningProxy]:
    """The demo model server behind a proxy serving `policy` as the default region."""
    async with proxy_before(build_model_app(), tmp_path, {"default.yaml": policy}) as proxy:
        yield proxy


async def send(
    session: aiohttp.ClientSession, proxy: RunningProxy, rows: Sequence[dict[str, Any]]
) -> list[tuple[int, Mapping[str, str], Any]]:
    """Rows as requests of 10 rows; (status, headers, body) of each, once the monitors caught up."""
    out: list[tuple[int, Mapping[str, str], Any]] = []
    for i in range(0, len(rows), 10):
        body = v2_request(list(rows[i : i + 10]), (*FEATURES, COUNTRY))
        async with session.post(proxy.url + INFER, json=body) as response:
            out.append((response.status, response.headers.copy(), await response.json()))
    await proxy.runtime.worker.flush()
    return out


def older(rows: Sequence[dict[str, Any]], years: int = 10) -> list[dict[str, Any]]:
    """Everyone `years` older."""
    return [{**row, "age": str(int(row["age"]) + years)} for row in rows]


def state(proxy: RunningProxy) -> str:
    """The adult model's breaker state."""
    breaker = proxy.runtime.breakers.breaker("default", "adult")
    assert breaker is not None
    return breaker.state_name


async def warm(session: aiohttp.ClientSession, proxy: RunningProxy) -> None:
    """Reference (1000 rows) and one unshifted window: still closed."""
    answers = await send(session, proxy, ROWS[:1200])
    assert {status for status, _, _ in answers} == {200}
    assert state(proxy) == "closed"


async def test_older_population_opens_the_breaker_and_clients_get_503(tmp_path: Path) -> None:
    async with guarded_model(tmp_path, POLICY.replace("ACTION", "reject")) as proxy:
        async with aiohttp.ClientSession() as session:
            await warm(session, proxy)
            await send(session, proxy, older(ROWS[1200:1400]))
            assert state(proxy) == "closed"  # one window over the bound: not yet
            await send(session, proxy, older(ROWS[1400:1600]))
            assert state(proxy) == "open"
            [(status, headers, body)] = await send(session, proxy, older(ROWS[1600:1610]))
    assert status == 503 and int(headers["Retry-After"]) >= 59
    assert headers["X-Guard-Breaker"] == "open"
    assert body["region"] == "default" and body["request_id"] == headers["X-Request-Id"]
    assert body["error"] == "circuit breaker open"
    assert "drift.age.psi>0.25x2" in body["reason"]


async def test_flag_action_serves_and_marks_the_answer(tmp_path: Path) -> None:
    async with guarded_model(tmp_path, POLICY.replace("ACTION", "flag")) as proxy:
        async with aiohttp.ClientSession() as session:
            await warm(session, proxy)
            await send(session, proxy, older(ROWS[1200:1600]))
            [(status, headers, body)] = await send(session, proxy, older(ROWS[1600:1610]))
            drift = proxy.runtime.watchdog.status()
    assert status == 200 and headers["X-Guard-Breaker"] == "open"
    assert len(body["outputs"][0]["data"]) == 10
    assert drift["models"]["default|adult|"]["last"]["drift.age.psi"] > 0.25


async def test_a_single_native_country_opens_the_breaker(tmp_path: Path) -> None:
    async with guarded_model(tmp_path, POLICY.replace("ACTION", "reject")) as proxy:
        async with aiohttp.ClientSession() as session:
            await warm(session, proxy)
            mexico = [{**row, COUNTRY: "Mexico"} for row in ROWS[1200:1600]]
            await send(session, proxy, mexico[:200])
            assert state(proxy) == "closed"
            await send(session, proxy, mexico[200:])
            breaker = proxy.runtime.breakers.breaker("default", "adult")
    assert breaker is not None and breaker.state_name == "open"
    assert "drift.native-country.chi2<0.001x2" in breaker.reason
    assert breaker.last_values["drift.native-country.chi2"] < 1e-6
