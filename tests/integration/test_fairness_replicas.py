"""Two proxies sharing one Redis: labels join across replicas, thresholds agree and persist."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from guardproxy.testing import RunningProxy, eventually, running_proxy
from tests.integration.compas import AUTH, compas_settings, scoring_upstream

from ..state.conftest import drop_prefix

KEY = ("default", "recidivism", "")
ADAPT_POLICY = """
region: default
models:
  - name: recidivism
    protocol: jsonpath
    routes: ["/score"]
    score: {path: "$.scores[*]"}
groups:
  attribute: {header: X-Group, trusted: true}
  values: [a, b]
decision:
  threshold: 0.5
  adapt: {constraint: equal_opportunity, min_labels_per_group: 50, max_step: 0.05, every: 1h}
fairness: {bins: 100}
"""


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A Redis key prefix for this test only, removed afterwards."""
    name = f"gp-test-{os.urandom(4).hex()}:"
    yield name
    await drop_prefix(name)


async def score(
    session: aiohttp.ClientSession, proxy: RunningProxy, rid: str, group: str, s: float
) -> None:
    headers = {"X-Group": group, "X-Request-Id": rid}
    async with session.post(f"{proxy.url}/score", json={"scores": [s]}, headers=headers) as r:
        assert r.status == 200


async def feedback(
    session: aiohttp.ClientSession, proxy: RunningProxy, items: list[dict[str, object]]
) -> dict[str, int]:
    url = f"{proxy.url}/guardproxy/v1/feedback"
    async with session.post(url, data=json.dumps(items), headers=AUTH) as r:
        assert r.status == 200
        totals: dict[str, int] = (await r.json())["totals"]
        return totals


async def test_two_replicas_share_labels_and_thresholds(tmp_path: Path, prefix: str) -> None:
    state = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    async with scoring_upstream() as upstream, aiohttp.ClientSession() as session:
        one = compas_settings(upstream, tmp_path / "one", state=state)
        two = compas_settings(upstream, tmp_path / "two", state=state)
        (one.policies / "default.yaml").write_text(ADAPT_POLICY)  # type: ignore[operator]
        (two.policies / "default.yaml").write_text(ADAPT_POLICY)  # type: ignore[operator]
        async with running_proxy(one) as a, running_proxy(two) as b:
            labels = []
            for i in range(100):
                s = i / 100 + 0.005
                for group, cut in (("a", 0.3), ("b", 0.7)):
                    await score(session, a if i % 2 else b, f"{group}{i}", group, s)
                    labels.append({"request_id": f"{group}{i}", "label": int(s >= cut)})
            await a.runtime.worker.flush()
            await b.runtime.worker.flush()
            # each label goes to the replica that did not see the prediction
            to_b = [x for x in labels if int(str(x["request_id"])[1:]) % 2]
            to_a = [x for x in labels if not int(str(x["request_id"])[1:]) % 2]
            assert (await feedback(session, b, to_b))["joined"] == 100
            assert (await feedback(session, a, to_a))["joined"] == 100
            assert (await feedback(session, a, to_b[:5]))["duplicate"] == 5
            first = await a.runtime.engine.calibrate(KEY)
            second = await b.runtime.engine.calibrate(KEY)  # steps on from a's table
            assert first.status == second.status == "published"
            table = b.runtime.thresholds.current
            assert table.version.startswith("t2-")
            await eventually(lambda: a.runtime.thresholds.current == table)
            assert table.rule(KEY, "a").low == pytest.approx(0.40)  # type: ignore[union-attr]
            await a.runtime.engine.refresh()
            groups = a.runtime.engine.report(KEY)["groups"]
            assert groups["a"]["decisions"] == groups["b"]["labeled"] == 100
        async with running_proxy(one) as restarted:
            assert restarted.runtime.thresholds.current == table
