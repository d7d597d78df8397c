"""Guards through the real proxy: label actions, failure modes, annotate modes, samples on disk."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from guardproxy.testing import (
    RunningProxy,
    proxy_before,
)

TAGGER = "/v1/models/tagger:predict"
BROKEN = "/v1/models/broken:predict"
DROPPED = "/v1/models/dropped:predict"
POLICIES = {
    "default.yaml": """
region: default
models:
  - {name: tagger, protocol: tfserving, score: {output: score}}
  - {name: broken, protocol: tfserving, score: {output: score}}
  - {name: dropped, protocol: tfserving, score: {output: score}}
groups: {attribute: {header: X-Group, trusted: true}, values: [a, b]}
decision: {threshold: 0.5, per_group: {b: 0.8}}
labels: {deny: [gorilla], action: suppress, output: labels}
sampling: {rate: 0.0}
""",
    "th.yaml": "region: th\nextends: default\nlabels: {action: block, block: {status: 451}}\n",
    "id.yaml": "region: id\nextends: default\nlabels: {action: flag}\n",
    "strict.yaml": "region: strict\nextends: default\ndecision: {on_error: fail_closed}\n",
    "body.yaml": "region: body\nextends: default\ndecision: {annotate: body}\n",
}
ANSWER = {"predictions": [{"score": 0.7, "labels": ["cat", "gorilla"]}]}


async def tagger(request: web.Request) -> web.Response:
    """A tagger answering labels and a score, contact details in its answer."""
    return web.json_response({**ANSWER, "note": "call +65 6123 4567 or ops@example.com"})


async def broken(request: web.Request) -> web.Response:
    """Claims JSON, sends garbage."""
    return web.Response(body=b'{"predictions": [', content_type="application/json")


async def dropped(request: web.Request) -> web.Response:
    """Closes the connection without answering."""
    assert request.transport is not None
    request.transport.close()
    return web.Response()


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[RunningProxy]:
    app = web.Application()
    app.router.add_post(TAGGER, tagger)
    app.router.add_post(BROKEN, broken)
    app.router.add_post(DROPPED, dropped)
    limits = {"max_body": 64 * 1024, "trust_region_header": "X-Region"}
    async with proxy_before(app, tmp_path, POLICIES, **limits) as proxy:
        yield proxy


async def post(
    client: aiohttp.ClientSession, proxy: RunningProxy, path: str, region: str, group: str = "a"
) -> tuple[aiohttp.ClientResponse, bytes]:
    headers = {"X-Region": region, "X-Group": group, "X-Request-Id": f"{region}-{group}"}
    body = {"instances": [{"x": 1}]}
    async with client.post(proxy.url + path, json=body, headers=headers) as response:
        return response, await response.read()


async def samples_written(proxy: RunningProxy, tmp_path: Path) -> str:
    """Flush the sample writer and return what the JSONL sink holds."""
    await proxy.runtime.sample_writer.stop(flush=True)
    return "".join(p.read_text() for p in (tmp_path / "samples").glob("*.jsonl"))


async def test_suppress_removes_the_denied_label(
    guarded: RunningProxy, client: aiohttp.ClientSession
) -> None:
    response, body = await post(client, guarded, TAGGER, "default")
    assert response.status == 200
    assert json.loads(body)["predictions"][0]["labels"] == ["cat"]
    assert response.headers["X-Guard-Region"] == "default"
    assert response.headers["X-Guard-Decision"] == "1"
    assert response.headers["X-Guard-Threshold"] == "0.5"


async def test_group_threshold_changes_the_decision(
    guarded: RunningProxy, client: aiohttp.ClientSession
) -> None:
    response, _ = await post(client, guarded, TAGGER, "default", group="b")
    assert (response.headers["X-Guard-Decision"], response.headers["X-Guard-Threshold"]) == (
        "0",
        "0.8",
    )


async def test_block_answers_the_policy_error(
    guarded: RunningProxy, client: aiohttp.ClientSession
) -> None:
    response, body = await post(client, guarded, TAGGER, "th")
    assert response.status == 451
    doc = json.loads(body)
    assert doc["request_id"] == "th-a"
    assert "gorilla" not in body.decode()


async def test_flag_keeps_the_answer_and_samples_it(
    guarded: RunningProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    response, body = await post(client, guarded, TAGGER, "id")
    assert response.status == 200
    assert json.loads(body)["predictions"][0]["labels"] == ["cat", "gorilla"]
    assert "X-Guard-Flag" in response.headers
    written = await samples_written(guarded, tmp_path)
    record = json.loads(written.splitlines()[0])
    assert record["request_id"] == "id-a"
    assert "ops@example.com" not in written and "6123 4567" not in written


async def test_body_annotation_adds_a_field(
    guarded: RunningProxy, client: aiohttp.ClientSession
) -> None:
    _, body = await post(client, guarded, TAGGER, "body")
    assert json.loads(body)["guardproxy"]["decisions"] == [1]


async def test_malformed_answer_fail_open_passes_untouched(
    guarded: RunningProxy, client: aiohttp.ClientSession
) -> None:
    response, body = await post(client, guarded, BROKEN, "default")
    assert (response.status, body) == (200, b'{"predictions": [')
    model = guarded.runtime.store.table.regions["default"].model("broken")
    chain = model.chain if model is not None else None
    assert chain.errors == {"decision": 1, "labels": 1}  # type: ignore[attr-defined]


async def test_malformed_answer_fail_closed_is_a_clear_502(
    guarded: RunningProxy, client: aiohttp.ClientSession
) -> None:
    response, body = await post(client, guarded, BROKEN, "strict")
    assert response.status == 502
    doc = json.loads(body)
    assert doc["request_id"] == "strict-a"
    assert "malformed JSON" in doc["error"]


async def test_upstream_failure_on_a_guarded_route_is_json_and_sampled(
    guarded: RunningProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    response, body = await post(client, guarded, DROPPED, "default")
    assert response.status == 502
    assert json.loads(body)["request_id"] == "default-a"
    written = await samples_written(guarded, tmp_path)
    record = json.loads(written.splitlines()[0])
    assert (record["request_id"], record["status"]) == ("default-a", 502)


async def test_oversized_body_on_a_guarded_route_is_a_json_413(
    guarded: RunningProxy, client: aiohttp.ClientSession
) -> None:
    huge = {"instances": [{"x": "y" * 100_000}]}
    headers = {"X-Request-Id": "big"}
    async with client.post(guarded.url + TAGGER, json=huge, headers=headers) as response:
        doc = await response.json()
    assert response.status == 413
    assert doc["request_id"] == "big"
