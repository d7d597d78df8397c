"""The PodMonitor's sampleLimit holds the scrape of a pod serving 1,000 models.

Prometheus drops a whole scrape over its sample limit (the target goes down, every series
goes stale), so the limit must fit the largest pod the README says one sidecar serves.
"""

from __future__ import annotations

import asyncio
from itertools import islice
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import v2_request
from guardproxy.testing import proxy_before

from .manifests import K8S, docs, of_kind

MODELS = 10
SUPPORTED = 1_000  # models one sidecar serves (README, "Many models and the fleet view")
POLICY = """
region: default
groups: {attribute: {input: sex}, values: [Female, Male]}
decision: {threshold: 0.5}
drift: {reference: {warmup: 10}, window: 10, signals: [score]}
models:
""" + "".join(f"  - {{name: m{i}}}\n" for i in range(MODELS))
FEEDBACK = {"Authorization": "Bearer feedback-secret"}  # guardproxy.testing.proxy_settings'


class Models:
    """Every model of the pod: every third answer a 503, the others alternate low and high."""

    def __init__(self) -> None:
        self.calls = 0
        self.app = web.Application()
        self.app.router.add_post("/v2/models/{name}/infer", self.infer)

    async def infer(self, request: web.Request) -> web.Response:
        """One model's answer."""
        self.calls += 1
        if self.calls % 3 == 0:
            return web.json_response({"error": "busy"}, status=503)
        rows = (await request.json())["inputs"][0]["shape"][0]
        scores = [0.3 + 0.4 * (i % 2) for i in range(rows)]
        output = {"name": "score", "shape": [rows], "datatype": "FP32", "data": scores}
        name = request.match_info["name"]
        return web.json_response({"model_name": name, "model_version": "1", "outputs": [output]})


async def samples_per_model(tmp_path: Path) -> float:
    """Samples of one scrape over the models served: traffic, errors and labels on each."""
    rows = list(islice(adult_rows(), 24))
    async with (
        proxy_before(Models().app, tmp_path, {"default.yaml": POLICY}) as proxy,
        aiohttp.ClientSession() as client,
    ):
        ids = []
        for i in range(MODELS):
            for start in range(0, len(rows), 4):
                body = v2_request(rows[start : start + 4])
                async with client.post(f"{proxy.url}/v2/models/m{i}/infer", json=body) as r:
                    if r.status == 200:
                        ids.append(r.headers["X-Request-Id"])
        await proxy.runtime.worker.flush()
        labels = [{"request_id": rid, "label": n % 2} for n, rid in enumerate(ids)]
        async with client.post(
            f"{proxy.url}/guardproxy/v1/feedback", json=labels, headers=FEEDBACK
        ) as r:
            assert r.status == 200, await r.text()
        await proxy.runtime.engine.refresh()
        async with client.get(f"{proxy.admin_url}/metrics") as r:
            text = await r.text()
    families = list(text_string_to_metric_families(text))
    assert any(f.name == "guardproxy_fairness_true_positive_rate" for f in families)
    return sum(len(f.samples) for f in families) / MODELS


def test_the_sample_limit_holds_a_scrape_of_the_models_a_sidecar_serves(tmp_path: Path) -> None:
    (monitor,) = of_kind(docs(K8S / "monitoring" / "podmonitor.yaml"), "PodMonitor")
    per_model = asyncio.run(samples_per_model(tmp_path))
    # 300 models with traffic scraped 13,008 samples: a limit of 10,000 dropped every scrape.
    assert SUPPORTED * per_model <= monitor["spec"]["sampleLimit"], per_model
