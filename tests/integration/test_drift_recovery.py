"""A breaker tripped by drift recovers on the probes' own answers.

With `reject`, the model sees no traffic while the breaker is open, so count-based drift
windows never fill again. In half-open the probes' scores form the window: the breaker
closes once they look like the reference, and opens again if they still do not.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from guardproxy.breaker.state import CircuitBreaker
from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import v2_request
from guardproxy.testing import (
    RunningProxy,
    eventually,
    proxy_before,
)

ROWS = list(adult_rows())
INFER = "/v2/models/churn/infer"
POLICY = """
region: default
models: [{name: churn}]
drift:
  reference: {warmup: 200}
  window: 100
  signals: [score]
  tests: {psi: null, ks: {p_value: 0.01}}
breaker:
  trip: [{when: drift.score.ks, below: 0.001, windows: 1}]
  open: {action: reject}
  cooldown: 0.3s
  window: 0.1s
  min_calls: 1                # each request's ten rows all count in the drift windows
  half_open: {probes: 20, close_after_windows: 1}
"""


class Model:
    """Scores spread over [0, 1), or squeezed into [0.6, 1) while `shifted`."""

    def __init__(self) -> None:
        self.shifted = False
        self.app = web.Application()
        self.app.router.add_post(INFER, self.infer)

    async def infer(self, request: web.Request) -> web.Response:
        doc = await request.json()
        ages = next(t["data"] for t in doc["inputs"] if t["name"] == "age")
        scores = [self.score(i, age) for i, age in enumerate(ages)]
        output = {"name": "score", "shape": [len(scores)], "datatype": "FP32", "data": scores}
        return web.json_response({"model_name": "churn", "outputs": [output]})

    def score(self, i: int, age: Any) -> float:
        digest = hashlib.blake2b(f"{i}-{age}-{id(self)}".encode(), digest_size=4).digest()
        u = int.from_bytes(digest, "big") / 2**32
        return 0.6 + 0.4 * u if self.shifted else u


@asynccontextmanager
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[RunningProxy, Model, CircuitBreaker]]:
    model = Model()
    async with proxy_before(model.app, tmp_path, {"default.yaml": POLICY}) as proxy:
        proxy.runtime.breakers.interval = 0.05
        breaker = proxy.runtime.breakers.breaker("default", "churn")
        assert breaker is not None
        yield proxy, model, breaker


async def send(
    session: aiohttp.ClientSession, proxy: RunningProxy, start: int, n: int
) -> list[int]:
    """n rows, ten per request, from ROWS[start:]; the statuses once the monitors caught up."""
    statuses = []
    for at in range(start, start + n, 10):
        async with session.post(proxy.url + INFER, json=v2_request(ROWS[at : at + 10])) as r:
            await r.read()
            statuses.append(r.status)
    await proxy.runtime.worker.flush()
    return statuses


async def trip(session: aiohttp.ClientSession, proxy: RunningProxy, model: Model) -> None:
    """A reference, a normal window, then a shifted window that opens the breaker."""
    assert set(await send(session, proxy, 0, 300)) == {200}
    model.shifted = True
    await send(session, proxy, 300, 100)


async def probe(
    session: aiohttp.ClientSession, proxy: RunningProxy, breaker: CircuitBreaker, start: int
) -> list[int]:
    """After the cooldown: requests until the half-open probes are spent."""
    await eventually(lambda: breaker.state_name == "half_open")
    statuses: list[int] = []
    while statuses.count(200) < 20:  # twenty probes: one row of each request counts
        statuses += await send(session, proxy, start + 10 * len(statuses), 10)
    return statuses


async def test_the_breaker_closes_once_the_probes_look_like_the_reference(tmp_path: Path) -> None:
    async with guarded(tmp_path) as (proxy, model, breaker), aiohttp.ClientSession() as session:
        await trip(session, proxy, model)
        assert breaker.state_name == "open" and "drift.score.ks" in breaker.reason
        assert await send(session, proxy, 400, 10) == [503]
        model.shifted = False  # the shift has ended, but only probes can show it
        statuses = await probe(session, proxy, breaker, 500)
        await eventually(lambda: breaker.state_name == "closed")
        after = await send(session, proxy, 800, 20)
    assert statuses.count(200) == 20 and after == [200, 200]
    assert breaker.last_values["drift.score.ks"] > 0.001


async def test_the_breaker_opens_again_while_the_shift_lasts(tmp_path: Path) -> None:
    async with guarded(tmp_path) as (proxy, model, breaker), aiohttp.ClientSession() as session:
        await trip(session, proxy, model)
        await probe(session, proxy, breaker, 500)
        await eventually(lambda: breaker.state_name == "open")
        rejected = await send(session, proxy, 800, 10)
        await asyncio.sleep(0)
    assert rejected == [503]
    assert "unhealthy window in half-open" in breaker.reason
    assert breaker.last_values["drift.score.ks"] < 0.001
