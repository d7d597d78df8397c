"""COMPAS end to end: ProPublica's rows through the real guard chain, labels fed back.

The engine must reproduce ProPublica's per-group figures for decile_score > 4 (score =
decile / 10 against a 0.45 threshold): selection rate, TPR, FPR and PPV per race.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guardproxy.testing import running_proxy
from tests.integration.compas import (
    AUTH,
    GROUPS,
    compas_rows,
    compas_settings,
    scoring_upstream,
)


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
