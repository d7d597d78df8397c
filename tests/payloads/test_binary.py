"""The binary tensor extension against the real tritonclient.http, on a real socket."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from aiohttp import web
from tritonclient.utils import np_to_triton_dtype

from guardproxy.payloads import compile_payload
from guardproxy.payloads.binary import (
    HEADER,
    BinaryBody,
    BinaryPayloadError,
    decode_request,
    decode_response,
    encode,
)
from guardproxy.payloads.errors import TooManyValues
from guardproxy.payloads.tensors import pack
from guardproxy.policy.models import ModelPolicy
from guardproxy.testing import serving

from .tritons import flat, same, tensors

JSON_OUTPUT = "INT32"  # the one output the client asks for as JSON, not binary


class Recorder:
    """A model server that records each request and echoes its inputs as outputs."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 24)
        app.router.add_post("/v2/models/{model}/infer", self.infer)
        return app

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        asked = decode_request(body, request.headers.get(HEADER))
        binary = {
            o["name"] for o in asked.doc["outputs"] if o.get("parameters", {}).get("binary_data")
        }
        outputs = [
            {k: t[k] for k in ("name", "shape", "datatype", "data")} for t in asked.doc["inputs"]
        ]
        doc = {"model_name": request.match_info["model"], "outputs": outputs}
        json_names = frozenset(t["name"] for t in outputs) - binary
        answer = encode(BinaryBody(doc, "outputs", names=json_names))
        headers = {HEADER: str(answer.header_length), "Content-Type": "application/octet-stream"}
        return web.Response(body=answer.body, headers=headers)


def triton_inputs(arrays: dict[str, np.ndarray[Any, Any]]) -> list[triton.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    return inputs


def infer_with_tritonclient(url: str, arrays: dict[str, np.ndarray[Any, Any]]) -> Any:
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    try:
        outputs = [triton.InferRequestedOutput(n, binary_data=n != JSON_OUTPUT) for n in arrays]
        return client.infer("echo", triton_inputs(arrays), outputs=outputs)
    finally:
        client.close()


async def test_tritonclient_request_and_answer_round_trip_every_datatype() -> None:
    recorder = Recorder()
    arrays = tensors()
    async with serving(recorder.app()) as url:
        result = await asyncio.to_thread(infer_with_tritonclient, url, arrays)
    headers, body = recorder.requests[0]
    assert int(headers[HEADER]) < len(body)  # tritonclient sent binary tensors
    decoded = decode_request(body, headers[HEADER])
    by_name = {t["name"]: t for t in decoded.doc["inputs"]}
    assert set(by_name) == set(arrays)
    for name, array in arrays.items():
        t = by_name[name]
        assert (t["datatype"], t["shape"]) == (name, list(array.shape))
        assert t["data"] == flat(array), name
        assert "parameters" not in t  # binary_data_size is transport, not content
        assert same(result.as_numpy(name), array), name
    json_output = result.get_output(JSON_OUTPUT)
    assert "binary_data_size" not in json_output.get("parameters", {})
    assert json_output["data"] == flat(arrays[JSON_OUTPUT])


def binary_answer() -> tuple[bytes, int, dict[str, bytes]]:
    """A Triton-style answer: scores, labels and an embedding, all binary."""
    sections = {
        "predict_proba": pack("FP32", [0.9, 0.1, 0.3, 0.7], "p"),
        "tags": pack("BYTES", ["cat", "gorilla"], "t"),
        "embedding": pack("FP16", [0.5] * 6, "e"),
    }
    outputs = [
        {"name": "predict_proba", "datatype": "FP32", "shape": [2, 2]},
        {"name": "tags", "datatype": "BYTES", "shape": [2]},
        {"name": "embedding", "datatype": "FP16", "shape": [2, 3]},
    ]
    for t in outputs:
        t["parameters"] = {"binary_data_size": len(sections[str(t["name"])])}
    header = triton_json({"model_name": "tagger", "model_version": "1", "outputs": outputs})
    return header + b"".join(sections.values()), len(header), sections


def triton_json(doc: dict[str, Any]) -> bytes:
    import json

    return json.dumps(doc).encode()  # spaces after separators, unlike orjson


def test_rewrite_keeps_untouched_sections_and_tritonclient_reads_it() -> None:
    body, length, sections = binary_answer()
    answer = decode_response(body, str(length))
    payload = compile_payload(
        ModelPolicy.model_validate(
            {
                "name": "m",
                "score": {"output": "predict_proba", "index": 1},
                "labels": {"deny": ["gorilla"], "output": "tags"},
            }
        )
    )
    assert payload.scores(answer.doc) == pytest.approx([0.1, 0.7])
    payload.set_labels(answer.doc, [["cat"], []])  # the label guard suppressing a term
    payload.annotate(answer.doc, [0, 1], [0.5, 0.5])  # decisions added as outputs
    new = encode(answer)
    result = triton.InferenceServerClient.parse_response_body(
        new.body, header_length=new.header_length
    )
    assert result.as_numpy("tags").tolist() == [b"cat", b""]
    assert result.as_numpy("guardproxy").tolist() == [0, 1]
    assert result.as_numpy("guardproxy_threshold").dtype == np.float32
    assert result.as_numpy("embedding").tolist() == [[0.5] * 3] * 2
    binary = new.body[new.header_length :]
    assert binary.startswith(sections["predict_proba"])  # untouched: byte for byte
    assert sections["embedding"] in binary
    assert sections["tags"] not in binary


def test_decoding_only_named_tensors_keeps_the_others_verbatim() -> None:
    body, length, sections = binary_answer()
    answer = decode_response(body, length, only={"predict_proba"})
    outputs = {t["name"]: t for t in answer.doc["outputs"]}
    assert outputs["predict_proba"]["data"] == pytest.approx([0.9, 0.1, 0.3, 0.7])
    assert "data" not in outputs["tags"]
    new = encode(answer)
    assert new.body[new.header_length :] == b"".join(sections.values())


def test_unchanged_answer_re_encodes_to_the_same_sections() -> None:
    body, length, _ = binary_answer()
    new = encode(decode_response(body, length))
    assert new.body[new.header_length :] == body[length:]
    again = decode_response(new.body, new.header_length)
    assert again.doc == decode_response(body, length).doc


def test_bool_bytes_other_than_one_survive_an_unrelated_change() -> None:
    header = b'{"outputs":[{"name":"b","datatype":"BOOL","shape":[2],'
    header += b'"parameters":{"binary_data_size":2}}]}'
    answer = decode_response(header + b"\x00\x07", len(header))
    assert answer.doc["outputs"][0]["data"] == [False, True]
    answer.doc["outputs"].append({"name": "x", "datatype": "INT8", "shape": [1], "data": [1]})
    new = encode(answer)
    assert new.body[new.header_length :] == b"\x00\x07\x01"


def test_a_json_answer_gains_json_outputs() -> None:
    body = b'{"outputs":[{"name":"s","datatype":"FP32","shape":[1],"data":[0.5]}]}'
    answer = decode_response(body, None)
    answer.doc["outputs"].append({"name": "d", "datatype": "INT64", "shape": [1], "data": [1]})
    new = encode(answer)
    assert new.header_length == len(new.body)
    result = triton.InferenceServerClient.parse_response_body(new.body, header_length=None)
    assert result.as_numpy("d").tolist() == [1]


def header_of(*tensors: dict[str, Any]) -> bytes:
    return triton_json({"outputs": list(tensors)})


FP32_2 = {"name": "p", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}


@pytest.mark.parametrize(
    ("body", "length", "message"),
    [
        (header_of(FP32_2) + bytes(8), "9999", "outside a body"),
        (header_of(FP32_2) + bytes(8), "-1", "not a byte count"),
        (header_of(FP32_2) + bytes(8), "1_0", "not a byte count"),
        (header_of(FP32_2) + bytes(8), " 1e3", "not a byte count"),
        (header_of(FP32_2) + bytes(12), None, "not valid JSON"),
        (b"[1, 2]", None, "not a JSON object"),
        (header_of(FP32_2) + bytes(4), "header", "binary data ends at 4 bytes"),
        (header_of(FP32_2) + bytes(12), "header", "add up to 8 bytes; the body has 12"),
        (header_of({**FP32_2, "shape": [3]}) + bytes(8), "header", "8 bytes for 3 FP32"),
        (header_of({**FP32_2, "shape": [-2, -1]}) + bytes(8), "header", "non-negative"),
        (header_of({**FP32_2, "datatype": "FP8"}) + bytes(8), "header", "unknown datatype"),
        (header_of({**FP32_2, "data": [1, 2]}) + bytes(8), "header", "both data and"),
        (header_of(FP32_2, FP32_2) + bytes(16), "header", "appears twice"),
        (
            header_of({**FP32_2, "parameters": {"binary_data_size": "8"}}) + bytes(8),
            "header",
            "must be a byte count",
        ),
        (
            header_of({**FP32_2, "datatype": "BYTES", "shape": [10**12]}) + bytes(8),
            "header",
            "cannot hold 1000000000000 BYTES elements",
        ),
        (
            header_of({**FP32_2, "datatype": "BYTES", "shape": [2]}) + b"\x05\0\0\0abcd",
            "header",
            "runs past the tensor",
        ),
        (
            header_of({**FP32_2, "datatype": "BYTES", "shape": [1]}) + b"\x01\0\0\0abcd",
            "header",
            "3 bytes after 1 BYTES elements",
        ),
    ],
)
def test_malformed_bodies_are_clear_errors(body: bytes, length: str | None, message: str) -> None:
    if length == "header":
        length = str(body.index(b"}]}") + 3)
    with pytest.raises(BinaryPayloadError, match=message):
        decode_response(body, length)


def test_encoding_refuses_values_that_do_not_fit() -> None:
    body, length, _ = binary_answer()
    answer = decode_response(body, length)
    answer.doc["outputs"][0]["data"] = [1.0, 2.0, 3.0]
    with pytest.raises(BinaryPayloadError, match="3 values for shape"):
        encode(answer)
    answer.doc["outputs"][0]["data"] = ["a", "b", "c", "d"]
    with pytest.raises(BinaryPayloadError, match="do not fit FP32"):
        encode(answer)
    answer.doc["outputs"].append({"name": "n", "datatype": "INT8", "shape": [1], "data": [300]})
    answer.doc["outputs"][0]["data"] = [1.0] * 4
    with pytest.raises(BinaryPayloadError, match="do not fit INT8"):
        encode(answer)


def request_of(*tensors: tuple[str, list[int], bytes]) -> tuple[bytes, str]:
    """A binary request of BYTES tensors (name, shape, raw section), and its header length."""
    described = [
        {
            "name": n,
            "datatype": "BYTES",
            "shape": shape,
            "parameters": {"binary_data_size": len(raw)},
        }
        for n, shape, raw in tensors
    ]
    header = triton_json({"inputs": described, "parameters": {"columns": ["a", "b"]}})
    return header + b"".join(raw for _, _, raw in tensors), str(len(header))


def test_a_named_tensor_over_max_rows_is_refused_before_its_bytes_are_read() -> None:
    # Sections that are not valid BYTES framing: refused by row count, never decoded.
    body, length = request_of(("sex", [101], bytes(4)), ("image", [10**6], bytes(4)))
    with pytest.raises(TooManyValues, match="a batch of 101 rows is over the limit of 100"):
        decode_request(body, length, only={"sex"}, max_rows=100)
    body, length = request_of(("sex", [1, 101], bytes(4)))
    with pytest.raises(TooManyValues, match="101 rows"):  # a named input is read whole
        decode_request(body, length, only={"sex"}, max_rows=100)
    body, length = request_of(("table", [101, 2], bytes(4)))
    with pytest.raises(TooManyValues, match="101 rows"):  # a column: one value per row
        decode_request(body, length, only={"a"}, max_rows=100)


def test_tensors_within_max_rows_or_not_read_are_decoded_as_before() -> None:
    within = pack("BYTES", ["Male"] * 100, "sex")
    body, length = request_of(("sex", [100], within), ("image", [10**6], bytes(4)))
    doc = decode_request(body, length, only={"sex"}, max_rows=100).doc
    assert doc["inputs"][0]["data"] == ["Male"] * 100 and "data" not in doc["inputs"][1]
    table = pack("BYTES", ["x", "y"] * 100, "table")
    body, length = request_of(("table", [100, 2], table))
    assert (
        len(decode_request(body, length, only={"a"}, max_rows=100).doc["inputs"][0]["data"]) == 200
    )


class CountedNames(frozenset[str]):
    """The names a policy reads, counting how often a name is looked up in them."""

    lookups = 0

    def __contains__(self, name: object) -> bool:
        type(self).lookups += 1
        return super().__contains__(name)


def test_the_bodys_column_names_are_read_once_not_once_per_tensor() -> None:
    # 2,000 empty binary tensors sharing 20,000 column names, none of them wanted: matched
    # per tensor, that is 40 million lookups (a 334 KB body held the loop 1.2 s).
    described = [
        {"name": f"t{i}", "datatype": "FP32", "shape": [0], "parameters": {"binary_data_size": 0}}
        for i in range(2000)
    ]
    header = triton_json(
        {"inputs": described, "parameters": {"columns": [f"c{j}" for j in range(20_000)]}}
    )
    CountedNames.lookups = 0
    body = decode_request(header, str(len(header)), only=CountedNames({"sex"}), max_rows=100)
    assert all("data" not in t for t in body.doc["inputs"])
    assert CountedNames.lookups <= 2000 + 20_000
