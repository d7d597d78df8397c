"""Many models behind one sidecar: each keeps its own decisions, fairness, drift and breaker,
and the fleet view ranks the ones breaking bad first, with the reason.

One upstream serves twenty models on /v2/models/{name}/infer: seventeen fair ones (scores
that do not depend on sex), one unfair (women's scores squeezed low), one drifting (scores
move up halfway through) and one failing every other request.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import v2_request
from guardproxy.testing import (
    RunningProxy,
    proxy_before,
)
from guardproxy.top import top

ROWS = list(adult_rows())[:300]
FAIR = [f"fair{i}" for i in range(17)]
MODELS = [*FAIR, "unfair", "drifting", "failing"]
POLICY = """
region: default
groups: {attribute: {input: sex}, values: [Female, Male]}
decision: {threshold: 0.5}
drift:  # windows this small need KS: PSI is biased upward in small samples
  reference: {warmup: 100}
  window: 100
  signals: [score]
  tests: {psi: null, ks: {p_value: 0.001}}
fairness: {disparate_impact: {min_ratio: 0.8}, equal_opportunity: null}
breaker: {min_calls: 10}  # a request is at most window / min_calls rows: all ten count
models:
MODELS
  - {name: fair0, decision: {threshold: 0.7}}
"""


def uniform(row: dict[str, Any]) -> float:
    """A score in [0, 1) that depends on the row but not on its sex."""
    text = json.dumps({k: v for k, v in row.items() if k != "sex"}, sort_keys=True)
    return int(hashlib.blake2b(text.encode(), digest_size=4).hexdigest(), 16) / 2**32


class Upstream:
    """The twenty models; `calls` counts requests per model."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.app = web.Application()
        self.app.router.add_post("/v2/models/{name}/infer", self.infer)

    async def infer(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls[name] = n = self.calls.get(name, 0) + 1
        if name == "failing" and n % 2 == 0:
            return web.json_response({"error": "model crashed"}, status=500)
        doc = await request.json()
        columns = {t["name"]: t["data"] for t in doc["inputs"]}
        rows = [dict(zip(columns, v, strict=True)) for v in zip(*columns.values(), strict=True)]
        scores = [self.score(name, row, n) for row in rows]
        output = {"name": "score", "shape": [len(scores)], "datatype": "FP32", "data": scores}
        return web.json_response({"model_name": name, "model_version": "1", "outputs": [output]})

    def score(self, name: str, row: dict[str, Any], n: int) -> float:
        score = uniform(row)
        if name == "unfair" and row["sex"] == "Female":
            return score * 0.4
        if name == "drifting" and n > 15:  # the second half of its traffic
            return 0.6 + 0.4 * score
        return score


@asynccontextmanager
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[RunningProxy, Upstream]]:
    upstream = Upstream()
    entries = "\n".join(f"  - {{name: {name}}}" for name in MODELS if name != "fair0")
    policy = {"default.yaml": POLICY.replace("MODELS", entries)}
    async with proxy_before(upstream.app, tmp_path, policy) as proxy:
        yield proxy, upstream


async def replay(session: aiohttp.ClientSession, proxy: RunningProxy, name: str) -> list[Any]:
    """Every row to one model, ten per request; (status, headers) of each."""
    answers = []
    for start in range(0, len(ROWS), 10):
        body = v2_request(ROWS[start : start + 10])
        async with session.post(f"{proxy.url}/v2/models/{name}/infer", json=body) as r:
            await r.read()
            answers.append((r.status, r.headers.copy()))
    return answers


async def get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        return await response.json()


async def test_twenty_models_keep_their_own_state_and_the_bad_ones_rank_first(
    tmp_path: Path,
) -> None:
    async with fleet(tmp_path) as (proxy, _), aiohttp.ClientSession() as session:
        answers = {name: await replay(session, proxy, name) for name in MODELS}
        await proxy.runtime.worker.flush()
        label = {"request_id": answers["unfair"][0][1]["X-Request-Id"], "label": 1}
        headers = {"Authorization": "Bearer feedback-secret"}
        async with session.post(
            f"{proxy.url}/guardproxy/v1/feedback", json=label, headers=headers
        ) as r:
            joined = (await r.json())["results"][0]["status"]
        await proxy.runtime.engine.refresh()
        view = await get(session, f"{proxy.admin_url}/status/models")
        async with session.get(f"{proxy.admin_url}/metrics") as r:
            metrics = await r.text()
        out = io.StringIO()
        code = await asyncio.to_thread(top, proxy.admin_url, 0, True, out)
        status = await get(session, f"{proxy.admin_url}/status")

    assert {s for name in MODELS for s, _ in answers[name] if name != "failing"} == {200}
    assert [s for s, _ in answers["failing"]].count(500) == 15
    assert {h["X-Guard-Model"] for _, h in answers["unfair"]} == {"unfair"}
    assert {h["X-Guard-Threshold"] for _, h in answers["fair0"]} == {",".join(["0.7"] * 10)}
    assert {h["X-Guard-Threshold"] for _, h in answers["fair1"]} == {",".join(["0.5"] * 10)}

    ranked = [(m["model"], m["state"]) for m in view["models"]]
    assert {name for name, _ in ranked[:3]} == {"unfair", "drifting", "failing"}, ranked
    assert all(state == "critical" for _, state in ranked[:3])
    kinds = {m["model"]: {p["kind"] for p in m["problems"]} for m in view["models"]}
    assert "fairness" in kinds["unfair"] and "drift" in kinds["drifting"]
    assert "errors" in kinds["failing"]
    assert all(m["score"] < 40 for m in view["models"][3:]), view["models"][3]
    by_name = {m["model"]: m for m in view["models"]}
    assert by_name["unfair"]["fairness"]["bounds"]["disparate_impact"]["significant"]
    assert by_name["drifting"]["version"] == "1"

    fairness = status["fairness"]["models"]
    unfair = fairness["default|unfair|1"]["fairness"]["groups"]
    fair = fairness["default|fair1|1"]["fairness"]["groups"]
    assert unfair["Female"]["selection_rate"]["value"] == 0.0
    assert fair["Female"]["selection_rate"]["value"] > 0.3
    assert joined == "joined" and unfair["Female"]["labeled"] + unfair["Male"]["labeled"] == 1
    assert fair["Female"]["labeled"] == 0  # the label joined the unfair model's record only
    drift = status["drift"]["models"]
    assert drift["default|drifting|1"]["alarmed_windows"] >= 1
    assert drift["default|fair1|1"]["alarmed_windows"] == 0

    decisions = [line for line in metrics.splitlines() if line.startswith("guardproxy_decisions")]
    assert any('model="unfair"' in line for line in decisions)
    health = [line for line in metrics.splitlines() if line.startswith("guardproxy_model_health")]
    assert len(health) == len(MODELS)

    lines = out.getvalue().splitlines()
    assert code == 0 and lines[0].startswith("guardproxy top") and "3 critical" in lines[0]
    assert lines[2].split()[:1] == ["STATE"]
    assert {line.split()[2].split("@")[0] for line in lines[3:6]} == {
        "default/unfair",
        "default/drifting",
        "default/failing",
    }
