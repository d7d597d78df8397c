"""COMPAS end to end: ProPublica's rows through the real guard chain, labels fed back.

The engine must reproduce ProPublica's per-group figures for decile_score > 4 (score =
decile / 10 against a 0.45 threshold): selection rate, TPR, FPR and PPV per race.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from guardproxy.settings import Settings
from guardproxy.testing import proxy_settings, running_proxy, serving

DATA = Path(__file__).parent.parent / "data" / "compas_two_years.csv"
AUTH = {"Authorization": "Bearer feedback-secret"}
GROUPS = ("African-American", "Caucasian")
POLICY = """
region: default
models:
  - name: recidivism
    protocol: jsonpath
    routes: ["/score"]
    score: {path: "$.scores[*]"}
groups:
  attribute: {header: X-Group, trusted: true}
  values: [African-American, Caucasian]
decision:
  threshold: 0.45
fairness: {bins: 100}
"""


def scoring_app() -> web.Application:
    """A model server that answers the scores it was sent."""

    async def score(request: web.Request) -> web.Response:
        return web.json_response({"scores": (await request.json())["scores"]})

    app = web.Application()
    app.router.add_post("/score", score)
    return app


@asynccontextmanager
async def scoring_upstream() -> AsyncIterator[str]:
    """The scoring app on a free port."""
    async with serving(scoring_app()) as url:
        yield url


def policy_dir(tmp_path: Path, text: str = POLICY) -> Path:
    """A policy directory holding one default.yaml."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "default.yaml").write_text(text)
    return tmp_path


def compas_settings(upstream: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Proxy settings on the COMPAS policy, samples kept under tmp_path."""
    policies = policy_dir(tmp_path / "policies")
    return proxy_settings(upstream, policies=policies, samples_dir=tmp_path / "s", **overrides)


def compas_rows() -> list[tuple[str, float, int]]:
    """(race, decile / 10, two_year_recid) of ProPublica's filtered rows of the two groups."""
    with DATA.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [
        r
        for r in rows
        if r["days_b_screening_arrest"]
        and -30 <= float(r["days_b_screening_arrest"]) <= 30
        and r["is_recid"] != "-1"
        and r["c_charge_degree"] != "O"
        and r["score_text"] != "N/A"
    ]
    assert len(kept) == 6172
    return [
        (r["race"], int(r["decile_score"]) / 10, int(r["two_year_recid"]))
        for r in kept
        if r["race"] in GROUPS
    ]


async def send_batches(
    session: aiohttp.ClientSession, url: str, rows: list[tuple[str, float, int]], size: int = 25
) -> list[dict[str, Any]]:
    """Score rows in per-group batches through the proxy; the labels keyed by row id."""
    batches = [
        [r for r in rows if r[0] == g][i : i + size]
        for g in GROUPS
        for i in range(0, sum(r[0] == g for r in rows), size)
    ]
    gate = asyncio.Semaphore(16)

    async def one(n: int, batch: list[tuple[str, float, int]]) -> list[dict[str, Any]]:
        rid = f"compas-{n}"
        headers = {"X-Group": batch[0][0], "X-Request-Id": rid}
        async with (
            gate,
            session.post(url, json={"scores": [r[1] for r in batch]}, headers=headers) as resp,
        ):
            assert resp.status == 200
            decisions = resp.headers["X-Guard-Decision"].split(",")
        assert decisions == [str(int(r[1] > 0.45)) for r in batch]
        return [
            {"request_id": rid if i == 0 else f"{rid}:{i}", "label": r[2]}
            for i, r in enumerate(batch)
        ]

    labels = await asyncio.gather(*(one(n, b) for n, b in enumerate(batches)))
    return [item for chunk in labels for item in chunk]


EXPECTED = {
    "selection_rate": (0.576, 0.331),
    "true_positive_rate": (0.715, 0.504),
    "false_positive_rate": (0.423, 0.220),
    "positive_predictive_value": (0.649, 0.595),
}


async def test_compas_replay_reproduces_propublica(tmp_path: Path) -> None:
    rows = compas_rows()
    async with scoring_upstream() as upstream:
        settings = compas_settings(upstream, tmp_path)
        async with running_proxy(settings) as proxy, aiohttp.ClientSession() as session:
            labels = await send_batches(session, f"{proxy.url}/score", rows)
            await proxy.runtime.worker.flush()
            body = "\n".join(json.dumps(item) for item in labels)
            async with session.post(
                f"{proxy.url}/guardproxy/v1/feedback", data=body, headers=AUTH
            ) as r:
                assert r.status == 200
                assert (await r.json())["totals"]["joined"] == len(rows) == 5278
            await proxy.runtime.engine.refresh()
            async with session.get(f"{proxy.admin_url}/status") as r:
                status = await r.json()
    report = status["fairness"]["models"]["default|recidivism|"]["fairness"]
    for metric, expected in EXPECTED.items():
        measured = [report["groups"][g][metric]["value"] for g in GROUPS]
        assert measured == pytest.approx(expected, abs=0.001), metric
    assert report["groups"]["African-American"]["decisions"] == 3175
    assert status["monitor"]["dropped"] == 0
    assert 0 < status["monitor"]["max_consume_ms"] < 100
