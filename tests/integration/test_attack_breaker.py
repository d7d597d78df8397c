"""Clients cannot push the breaker open for everyone, nor wedge it half-open."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from guardproxy.breaker.state import CircuitBreaker
from guardproxy.demo.server import v2_request
from guardproxy.testing import RecordingModel, RunningProxy, eventually, proxy_before
from tests.integration.attacks import INFER, applicant, guarded, post
from tests.integration.test_drift_recovery import ROWS, Model

POLICY = """
region: default
models: [{name: adult}]
groups: {attribute: {input: sex}, values: [Female, Male]}
breaker:
  trip: [{when: upstream.error_rate, above: 0.5, windows: 1}]
  open: {action: reject}
  cooldown: 0.3s
  window: WINDOW
  min_calls: MIN_CALLS
  half_open: {probes: 3, close_after_windows: 1}
"""


def policy(window: str = "0.2s", min_calls: int = 1) -> dict[str, str]:
    text = POLICY.replace("WINDOW", window).replace("MIN_CALLS", str(min_calls))
    return {"default.yaml": text}


def state(proxy: RunningProxy) -> str:
    breaker = proxy.runtime.breakers.breaker("default", "adult")
    return "none" if breaker is None else breaker.state_name


async def leave_midway(proxy: RunningProxy) -> None:
    """Promise a 1000-byte body, send 10 bytes, hang up."""
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    writer.write(head.encode() + b'{"inputs":')
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()


async def windows_closed(breaker: CircuitBreaker, count: int) -> None:
    """Wait until `count` more upstream health windows have closed."""
    for _ in range(count):
        started = breaker.upstream.started
        await eventually(lambda: breaker.upstream.started > started)  # noqa: B023


async def test_requests_that_end_before_the_model_free_their_probe_slots(tmp_path: Path) -> None:
    model = RecordingModel(status=500)
    async with guarded(tmp_path, policy(), model, max_body=4096) as (proxy, _):
        proxy.runtime.breakers.interval = 0.05
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                await post(session, proxy.url + INFER, applicant())
            await eventually(lambda: state(proxy) == "open")
            model.status = 200
            breaker = proxy.runtime.breakers.breaker("default", "adult")
            assert breaker is not None
            await eventually(breaker.cooldown_over)
            huge = applicant(note="x" * 8192)
            for _ in range(4):  # every probe slot taken by a 413 or a 415, then given back
                code, _, _ = await post(session, proxy.url + INFER, huge)
                assert code == 413
                brotli = {"Content-Encoding": "br"}
                assert (await post(session, proxy.url + INFER, applicant(), brotli))[0] == 415
            for _ in range(4):  # or by a client that leaves halfway through its body
                await leave_midway(proxy)
            await eventually(lambda: proxy.runtime.proxy.counts.client_gone == 4)
            assert state(proxy) == "half_open"
            code, headers, _ = await post(session, proxy.url + INFER, applicant())
            assert code == 200 and headers["X-Guard-Breaker"] == "half_open"  # a real probe
            await eventually(lambda: state(proxy) == "closed")
        breaker = proxy.runtime.breakers.breaker("default", "adult")
        assert breaker is not None and breaker.probes_released >= 12


async def test_fewer_calls_than_min_calls_never_trip_the_error_rate(tmp_path: Path) -> None:
    model = RecordingModel(status=500)
    async with guarded(tmp_path, policy(min_calls=20), model) as (proxy, _):
        proxy.runtime.breakers.interval = 0.05
        async with aiohttp.ClientSession() as session:
            for _ in range(19):
                assert (await post(session, proxy.url + INFER, applicant()))[0] == 500
        breaker = proxy.runtime.breakers.breaker("default", "adult")
        assert breaker is not None
        await eventually(lambda: "upstream.consecutive_5xx" in breaker.last_values)
        await windows_closed(breaker, 2)  # more windows close, none with a rate
        assert state(proxy) == "closed" and "upstream.error_rate" not in breaker.last_values


async def test_a_flood_of_malformed_bodies_does_not_open_the_breaker(tmp_path: Path) -> None:
    model = RecordingModel(status=500)  # a model that crashes on what it cannot parse
    async with guarded(tmp_path, policy("1s", min_calls=5), model) as (proxy, _):
        proxy.runtime.breakers.interval = 0.05
        async with aiohttp.ClientSession() as session:
            for i in range(40):
                code, _, _ = await post(session, proxy.url + INFER, b'{"inputs": [' + b"x" * i)
                assert code == 400  # refused before the model is asked
            breaker = proxy.runtime.breakers.breaker("default", "adult")
            assert breaker is not None
            await windows_closed(breaker, 1)
            assert state(proxy) == "closed"
            for _ in range(10):  # the model failing on well-formed requests still counts
                await post(session, proxy.url + INFER, applicant())
            await eventually(lambda: state(proxy) == "open")


async def test_a_client_cannot_name_the_model_version_its_requests_count_under(
    tmp_path: Path,
) -> None:
    # A server that answers every versioned path without naming a version: were the path's
    # version taken, each new one would start new monitors and fairness counters.
    model = RecordingModel(lenient=True)
    async with guarded(tmp_path, model=model) as (proxy, _), aiohttp.ClientSession() as session:
        for i in range(30):
            path = f"/v2/models/adult/versions/v{i}/infer"
            assert (await post(session, proxy.url + path, applicant()))[0] == 200
        await proxy.runtime.worker.flush()
        await proxy.runtime.engine.refresh()
        runtime = proxy.runtime
    assert set(runtime.watchdog.drift) == {("default", "adult", "")}
    assert runtime.engine.model_keys() == [("default", "adult", "")]


DRIFT = """
region: default
models: [{name: churn}]
drift:
  reference: {warmup: 100}
  window: 100
  signals: [score]
  tests: {psi: null, ks: {p_value: 0.01}}
breaker:
  trip: [{when: drift.score.ks, below: 0.001, windows: 1}]
  open: {action: reject}
  min_calls: 20
"""


async def test_one_batch_cannot_fill_the_drift_windows_that_open_the_breaker(
    tmp_path: Path,
) -> None:
    model = Model()  # scores spread over [0, 1), squeezed into [0.6, 1) while shifted
    url = "/v2/models/churn/infer"
    async with proxy_before(model.app, tmp_path, {"default.yaml": DRIFT}) as proxy:
        breaker = proxy.runtime.breakers.breaker("default", "churn")
        assert breaker is not None
        async with aiohttp.ClientSession() as session:

            async def send(rows: list[dict[str, Any]]) -> None:
                async with session.post(proxy.url + url, json=v2_request(rows)) as response:
                    assert response.status == 200

            for i in range(100):  # the reference: a hundred single rows
                await send(ROWS[i : i + 1])
            model.shifted = True
            await send(ROWS[:2000])  # a window of 100 rows twenty times over, in one request
            await proxy.runtime.worker.flush()
            drift = proxy.runtime.watchdog.drift[("default", "churn", "")]
            assert drift.rows_seen == 105  # of the batch, 100 / min_calls = 5 evenly spread rows
            assert breaker.state_name == "closed" and proxy.runtime.watchdog.window_counts == {}
            for i in range(95):  # the same shift from many requests is a window, and trips
                await send(ROWS[i : i + 1])
            await proxy.runtime.worker.flush()
            await eventually(lambda: breaker.state_name == "open")
