"""Requests with many rows through the running proxy: decisions come in the body, the monitors
take the rows in pieces (each recorded under its own id, the request counted once), and a
batch over --max-rows is refused before the model is asked."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import build_model_app, v2_request
from guardproxy.hotpath.observation import Observation
from guardproxy.monitors.worker import BATCH_ROWS
from guardproxy.payloads.binary import HEADER, BinaryBody, encode
from guardproxy.testing import proxy_settings, running_proxy, serving

ROWS = list(adult_rows())[: BATCH_ROWS * 2 + 50]
INFER = "/v2/models/adult/infer"
FEEDBACK = {"Authorization": "Bearer feedback-secret"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Batches:
    """A consumer that keeps how many rows each batch it got had."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def consume(self, batch: list[Observation]) -> None:
        self.rows.append(sum(len(ob.verdicts) for ob in batch))


async def test_a_request_with_many_rows_is_monitored_in_pieces() -> None:
    async with serving(build_model_app()) as model_url:
        async with running_proxy(proxy_settings(model_url)) as proxy:
            runtime, batches = proxy.runtime, Batches()
            runtime.worker.consumers.append(batches)
            async with aiohttp.ClientSession() as session:
                headers = {"X-Request-Id": "big"}
                body = v2_request(ROWS)
                async with session.post(proxy.url + INFER, json=body, headers=headers) as r:
                    assert r.status == 200 and r.headers["X-Guard-Decision"] == "body"
                    outputs = {t["name"]: t["data"] for t in (await r.json())["outputs"]}
                await runtime.worker.flush()
                assert batches.rows == [BATCH_ROWS, BATCH_ROWS, 50]
                assert runtime.worker.processed == 1
                assert runtime.health.recent(("default", "adult"))["total"]["decided"] == 1
                last = len(ROWS) - 1
                labels = [{"request_id": i, "label": 1} for i in ("big", "big:256", f"big:{last}")]
                url = proxy.url + "/guardproxy/v1/feedback"
                async with session.post(url, data=json.dumps(labels), headers=FEEDBACK) as r:
                    doc = await r.json()
    assert len(outputs["guardproxy"]) == len(ROWS)
    assert [item["status"] for item in doc["results"]] == ["joined"] * 3
    assert runtime.engine.recorded == len(ROWS)


async def test_a_batch_over_max_rows_is_refused_and_the_model_never_asked() -> None:
    model = build_model_app()
    calls: list[str] = []

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        calls.append(request.path)
        return await handler(request)

    model.middlewares.append(count)
    async with serving(model) as model_url:
        async with running_proxy(proxy_settings(model_url, max_rows=100)) as proxy:
            async with aiohttp.ClientSession() as session:
                over = v2_request(ROWS[:101])
                async with session.post(proxy.url + INFER, json=over) as r:
                    assert r.status == 413
                    doc = await r.json()
                async with session.post(proxy.url + INFER, json=v2_request(ROWS[:100])) as r:
                    assert r.status == 200
                over_binary = encode(BinaryBody(over, "inputs"))  # every input a binary tensor
                headers = {HEADER: str(over_binary.header_length)}
                async with session.post(
                    proxy.url + INFER, data=over_binary.body, headers=headers
                ) as r:
                    assert r.status == 413
                    binary_doc = await r.json()
    assert doc["error"] == binary_doc["error"] == "a batch of 101 rows is over the limit of 100"
    assert calls == [INFER]  # only the batch within the limit reached the model
    counts, worker = proxy.runtime.proxy.counts, proxy.runtime.worker
    assert counts.refused == {413: 2} and counts.blocked == 0
    assert worker.offered == 1 and proxy.runtime.samples.offered == 1  # the refusal: neither
