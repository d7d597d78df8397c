"""tritonclient's binary tensors through a running proxy, against a "Triton" that answers binary."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http as triton
from aiohttp import web
from tritonclient.utils import InferenceServerException

from guardproxy.guards.thresholds import HEADER_ROWS
from guardproxy.payloads.binary import HEADER, BinaryBody, decode_request, encode
from guardproxy.testing import (
    RunningProxy,
    proxy_before,
)

PATH = "/v2/models/adult/infer"
POLICIES = {
    "default.yaml": """
region: default
models:
  - name: adult
    protocol: kserve_v2
    score: {output: score}
groups: {attribute: {input: sex}, values: [Female, Male]}
decision: {threshold: 0.5, per_group: {Female: 0.3}, label_output: label}
labels: {deny: [gorilla], action: suppress, output: tags}
sampling: {rate: 0.0}
""",
    "body.yaml": "region: body\nextends: default\ndecision: {annotate: body}\n",
    "rewrite.yaml": "region: rewrite\nextends: default\ndecision: {annotate: rewrite}\n",
    "block.yaml": "region: block\nextends: default\nlabels: {action: block}\n",
    "plain.yaml": "region: plain\nextends: default\nlabels: {deny: [zebra]}\n",
    "strict.yaml": "region: strict\nextends: default\ndecision: {on_error: fail_closed}\n",
    "sampled.yaml": (
        "region: sampled\nextends: default\n"
        "sampling: {rate: 1.0, redact: [\"$.inputs[?name=='email']\"]}\n"
    ),
}
SEX = np.array([b"Female", b"Male", b"Female", b"Other", b"Female"], dtype=np.object_)
AGE = np.array([20, 45, 70, 33, 35], dtype=np.int64)
EMAIL = np.array([b"ann@example.com"] * 5, dtype=np.object_)
PIXELS = np.arange(5 * 64, dtype=np.float32).reshape(5, 64)  # never read by the policy
DECISIONS = "0,0,1,0,1"  # Female >= 0.3, anyone else >= 0.5; scores are age / 100
THRESHOLDS = "0.3,0.5,0.3,0.5,0.3"


class Triton:
    """A model server speaking the binary extension as Triton does: binary outputs on request."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[bytes] = []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 24)
        app.router.add_post(PATH, self.infer)
        return app

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((dict(request.headers), body))
        header = request.headers.get(HEADER)
        try:
            doc = decode_request(body, header).doc if header is not None else json.loads(body)
        except ValueError as exc:  # as Triton answers a request it cannot read
            return web.json_response({"error": str(exc)}, status=400)
        inputs = {t["name"]: t["data"] for t in doc["inputs"]}
        ages = inputs["age"]
        n = len(ages)
        # Scores as FP32 hold them, as Triton writes an FP32 in JSON too (widened to a double).
        scores = np.array(ages, dtype=np.float32) / np.float32(100)
        tags = [t for i in range(n) for t in ("cat", "gorilla" if i == 1 else "dog")]
        outputs = [
            {"name": "score", "shape": [n], "datatype": "FP32", "data": scores.tolist()},
            {"name": "tags", "shape": [n, 2], "datatype": "BYTES", "data": tags},
            {"name": "label", "shape": [n], "datatype": "INT64", "data": [1] * n},
        ]
        answer = {"model_name": "adult", "model_version": "1", "outputs": outputs}
        binary = {
            o["name"] for o in doc.get("outputs", []) if o.get("parameters", {}).get("binary_data")
        }
        if request.headers.get("X-Answer") == "malformed":
            return self._binary(b'{"outputs": []}', 999)
        if not binary:
            self.answers.append(json.dumps(answer).encode())
            return web.Response(body=self.answers[-1], content_type="application/json")
        names = frozenset(o["name"] for o in outputs) - binary
        encoded = encode(BinaryBody(answer, "outputs", names=names))
        self.answers.append(encoded.body)
        return self._binary(encoded.body, encoded.header_length)

    @staticmethod
    def _binary(body: bytes, length: int) -> web.Response:
        headers = {HEADER: str(length), "Content-Type": "application/octet-stream"}
        return web.Response(body=body, headers=headers)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[RunningProxy, Triton]]:
    model = Triton()
    async with proxy_before(model.app(), tmp_path, POLICIES, trust_region_header="X-Region") as p:
        yield p, model


def inputs(binary: bool = True, email: bool = False) -> list[triton.InferInput]:
    arrays = {"pixels": PIXELS, "age": AGE, "sex": SEX, **({"email": EMAIL} if email else {})}
    out = []
    for name, array in arrays.items():
        datatype = {"pixels": "FP32", "age": "INT64"}.get(name, "BYTES")
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        out.append(tensor)
    return out


def outputs(binary: bool = True) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(n, binary_data=binary) for n in ("score", "tags", "label")]


async def post_binary(
    client: aiohttp.ClientSession,
    proxy: RunningProxy,
    region: str,
    email: bool = False,
    **extra: str,
) -> tuple[aiohttp.ClientResponse, bytes, bytes]:
    """A request tritonclient encoded, sent as tritonclient sends it; the answer's bytes."""
    body, length = triton.InferenceServerClient.generate_request_body(
        inputs(email=email), outputs=outputs()
    )
    headers = {HEADER: str(length), "X-Region": region, **extra}
    async with client.post(proxy.url + PATH, data=body, headers=headers) as response:
        return response, await response.read(), body


def parsed(response: aiohttp.ClientResponse, body: bytes) -> Any:
    """The answer as tritonclient reads it."""
    length = response.headers.get(HEADER)
    return triton.InferenceServerClient.parse_response_body(
        body, header_length=int(length) if length is not None else None
    )


def infer(proxy: RunningProxy, region: str) -> Any:
    """tritonclient's own infer call through the proxy (run in a thread: it blocks)."""
    client = triton.InferenceServerClient(proxy.url.removeprefix("http://"))
    try:
        return client.infer("adult", inputs(), outputs=outputs(), headers={"X-Region": region})
    finally:
        client.close()


async def test_binary_rows_get_the_decisions_json_rows_get(
    served: tuple[RunningProxy, Triton], client: aiohttp.ClientSession
) -> None:
    proxy, _ = served
    response, body, _ = await post_binary(client, proxy, "default")
    assert response.status == 200
    assert (response.headers["X-Guard-Decision"], response.headers["X-Guard-Threshold"]) == (
        DECISIONS,
        THRESHOLDS,
    )
    json_body, _ = triton.InferenceServerClient.generate_request_body(
        inputs(binary=False), outputs=outputs(binary=False)
    )
    async with client.post(proxy.url + PATH, data=json_body, headers={"X-Region": "default"}) as r:
        assert HEADER not in r.headers
        assert r.headers["X-Guard-Decision"] == DECISIONS
        assert r.headers["X-Guard-Threshold"] == THRESHOLDS
        json_tags = json.loads(await r.read())["outputs"][1]["data"]
    tags = parsed(response, body).as_numpy("tags")
    assert tags.flatten().tolist() == [t.encode() for t in json_tags]
    assert proxy.runtime.proxy.counts.binary.requests == 1


async def test_a_suppressed_label_is_rewritten_in_the_binary_bytes_output(
    served: tuple[RunningProxy, Triton], client: aiohttp.ClientSession
) -> None:
    proxy, model = served
    response, body, _ = await post_binary(client, proxy, "default")
    result = parsed(response, body)
    assert result.as_numpy("tags")[1].tolist() == [b"cat", b""]
    assert result.as_numpy("tags")[0].tolist() == [b"cat", b"dog"]
    assert response.headers["X-Guard-Labels"] == "suppressed=1"
    upstream = model.answers[-1]
    upstream_length = decode_length(upstream)
    score = upstream[upstream_length : upstream_length + 20]  # 5 FP32 values, first section
    assert body[int(response.headers[HEADER]) :].startswith(score)  # untouched, byte for byte
    assert int(response.headers["Content-Length"]) == len(body)
    assert proxy.runtime.proxy.counts.binary.reencoded == 1


def decode_length(body: bytes) -> int:
    """The length of the JSON header at the start of an answer (its one top-level object)."""
    depth = 0
    for position, byte in enumerate(body):
        depth += {ord("{"): 1, ord("}"): -1}.get(byte, 0)
        if depth == 0:
            return position + 1
    raise AssertionError("no JSON header")


async def test_an_untouched_answer_and_request_are_forwarded_byte_for_byte(
    served: tuple[RunningProxy, Triton], client: aiohttp.ClientSession
) -> None:
    proxy, model = served
    response, body, sent = await post_binary(client, proxy, "plain")
    assert response.headers["X-Guard-Decision"] == DECISIONS
    assert body == model.answers[-1]
    assert response.headers[HEADER] == str(decode_length(body))
    received_headers, received = model.received[-1]
    assert received == sent and received_headers[HEADER] == str(decode_length(sent))


async def test_annotate_body_answers_parse_with_tritonclient(
    served: tuple[RunningProxy, Triton],
) -> None:
    proxy, _ = served
    result = await asyncio.to_thread(infer, proxy, "body")
    assert result.as_numpy("guardproxy").tolist() == [0, 0, 1, 0, 1]
    thresholds = result.as_numpy("guardproxy_threshold").tolist()
    assert thresholds == pytest.approx([0.3, 0.5, 0.3, 0.5, 0.3])
    assert result.as_numpy("score").tolist() == pytest.approx([0.2, 0.45, 0.7, 0.33, 0.35])


async def test_rewrite_replaces_the_binary_label_output(
    served: tuple[RunningProxy, Triton],
) -> None:
    proxy, _ = served
    result = await asyncio.to_thread(infer, proxy, "rewrite")
    assert result.as_numpy("label").tolist() == [0, 0, 1, 0, 1]


async def test_a_blocked_binary_answer_is_the_policy_error(
    served: tuple[RunningProxy, Triton],
) -> None:
    proxy, _ = served
    with pytest.raises(InferenceServerException, match="withheld by policy"):
        await asyncio.to_thread(infer, proxy, "block")


@pytest.mark.parametrize(("region", "status"), [("default", 200), ("strict", 502)])
async def test_malformed_binary_framing_follows_on_error(
    served: tuple[RunningProxy, Triton], client: aiohttp.ClientSession, region: str, status: int
) -> None:
    proxy, _ = served
    response, body, _ = await post_binary(client, proxy, region, **{"X-Answer": "malformed"})
    assert response.status == status
    assert response.headers["X-Guard-Decision"] == "unscored"
    if status == 200:
        assert body == b'{"outputs": []}' and response.headers[HEADER] == "999"
    else:
        assert "binary output" in json.loads(body)["error"]
    async with client.get(proxy.admin_url + "/status") as r:
        counts = (await r.json())["requests"]["binary"]
    assert counts == {"requests": 1, "answers": 1, "reencoded": 0, "malformed": 1}


def framings() -> dict[str, tuple[bytes, int]]:
    """Binary requests whose framing the guards refuse, and the header length each sends."""
    body, length = triton.InferenceServerClient.generate_request_body(inputs(), outputs=outputs())
    header = json.loads(body[:length])
    header["inputs"][2]["data"] = ["Male"] * 5  # `sex` as JSON and as binary: which one is it?
    both = json.dumps(header).encode()
    return {
        "length past the header": (body, length + 1),
        "length short of it": (body, length - 1),
        "data and binary_data_size": (both + body[length:], len(both)),
    }


@pytest.mark.parametrize("framing", ["length past the header", "length short of it",
                                     "data and binary_data_size"])  # fmt: skip
async def test_a_binary_request_the_guards_cannot_read_is_refused(
    served: tuple[RunningProxy, Triton], client: aiohttp.ClientSession, framing: str
) -> None:
    # Passed on, the model would read a group the guards never decided for.
    proxy, model = served
    body, length = framings()[framing]
    headers = {HEADER: str(length), "X-Region": "default"}
    async with client.post(proxy.url + PATH, data=body, headers=headers) as response:
        assert response.status == 400
        error = (await response.json())["error"]
        assert error.startswith("the guards cannot read the request: binary input: ")
    assert model.received == []  # the model was not asked
    counts = proxy.runtime.proxy.counts
    assert (counts.binary.malformed, counts.refused) == (1, {400: 1})


async def test_a_sample_holds_the_decoded_tensors_redacted(
    served: tuple[RunningProxy, Triton], client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    proxy, _ = served
    response, _, _ = await post_binary(client, proxy, "sampled", email=True)
    assert response.status == 200
    await proxy.runtime.sample_writer.stop(flush=True)
    written = "".join(p.read_text() for p in (tmp_path / "samples").glob("*.jsonl"))
    assert "ann@example.com" not in written
    record = json.loads(written.splitlines()[0])
    request = {t["name"]: t for t in record["request"]["inputs"]}
    assert request["sex"]["data"] == ["Female", "Male", "Female", "Other", "Female"]
    assert all(value.startswith("[REDACTED") for value in request["email"]["data"])
    answer = {t["name"]: t for t in record["response"]["outputs"]}
    assert answer["tags"]["data"][2:4] == ["cat", ""]  # the answer as the client got it


@pytest.mark.parametrize("values", [["120", "100"], ["120, 100"], ["+120"], ["1" * 13]])
async def test_a_header_length_read_two_ways_is_refused(
    served: tuple[RunningProxy, Triton], values: list[str]
) -> None:
    proxy, model = served
    body, length = triton.InferenceServerClient.generate_request_body(inputs(), outputs=outputs())
    headers = [(HEADER, value.replace("120", str(length))) for value in values]
    async with (
        aiohttp.ClientSession() as session,
        session.post(proxy.url + PATH, data=body, headers=headers) as response,
    ):
        assert response.status == 400
        assert "Inference-Header-Content-Length" in (await response.json())["error"]
    assert model.received == []  # never forwarded


async def test_a_large_binary_batch_gets_its_decisions_as_binary_outputs(
    served: tuple[RunningProxy, Triton],
) -> None:
    proxy, _ = served
    n = HEADER_ROWS + 44
    arrays = {
        "age": np.array([20 + i % 60 for i in range(n)], dtype=np.int64),
        "sex": np.array([b"Female", b"Male"] * (n // 2), dtype=np.object_),
    }
    tensors = []
    for name, array in arrays.items():
        tensor = triton.InferInput(name, [n], "INT64" if name == "age" else "BYTES")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)

    def call() -> Any:
        client = triton.InferenceServerClient(proxy.url.removeprefix("http://"))
        try:
            return client.infer("adult", tensors, outputs=outputs())
        finally:
            client.close()

    result = await asyncio.to_thread(call)
    scores = (arrays["age"] / 100).tolist()
    expected = [int(s >= (0.3 if i % 2 == 0 else 0.5)) for i, s in enumerate(scores)]
    assert result.as_numpy("guardproxy").tolist() == expected
    assert result.get_response()["outputs"][-1]["name"] == "guardproxy_threshold"
