"""What a model's policy reads of binary tensor bodies, decoded once, and samples of them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from guardproxy.payloads.binary import BinaryBody, decode_request, encode
from guardproxy.payloads.binary_bodies import BinaryBodies, BinaryReads, RawBody, binary_reads
from guardproxy.payloads.errors import MalformedBinary, PayloadError
from guardproxy.policy.models import ModelPolicy


def policy(**sections: Any) -> ModelPolicy:
    return ModelPolicy.model_validate({"name": "m", "protocol": "kserve_v2", **sections})


def triton_request(arrays: dict[str, np.ndarray[Any, Any]]) -> tuple[bytes, str]:
    """A request body as tritonclient builds it, every input binary."""
    inputs = []
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == np.object_ else "FP32"
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    body, length = triton.InferenceServerClient.generate_request_body(inputs)
    return body, str(length)


ARRAYS = {
    "pixels": np.arange(12, dtype=np.float32).reshape(3, 4),
    "sex": np.array([b"Female", b"Male", b"Female"], dtype=np.object_),
    "age": np.array([20.0, 45.0, 70.0], dtype=np.float32),
}


def test_the_reads_are_the_group_and_drift_inputs_and_the_guarded_outputs() -> None:
    reads = binary_reads(
        policy(
            groups={"attribute": {"input": "sex"}, "values": ["Female", "Male"]},
            drift={"signals": ["score", {"input": "age"}]},
            score={"output": "score"},
            labels={"deny": ["gorilla"], "output": "tags"},
            decision={"annotate": "rewrite", "label_output": "label"},
        )
    )
    assert reads == BinaryReads(frozenset({"sex", "age"}), frozenset({"score", "tags", "label"}))


@pytest.mark.parametrize(
    ("sections", "reads"),
    [
        ({}, BinaryReads(frozenset(), None)),  # no score output named: the first output
        ({"score": {"output": "p"}}, BinaryReads(frozenset(), frozenset({"p"}))),
        ({"score": {"output": "p"}, "decision": {"annotate": "rewrite"}},
         BinaryReads(frozenset(), frozenset({"p", "label", "predict"}))),
        ({"score": {"output": "p"}, "labels": {"deny": ["x"]}},  # the first BYTES output
         BinaryReads(frozenset(), None)),
        ({"groups": {"attribute": {"jsonpath": "$.inputs[0].data"}}, "score": {"output": "p"}},
         BinaryReads(None, frozenset({"p"}))),
    ],
)  # fmt: skip
def test_what_the_policy_cannot_name_is_decoded_whole(
    sections: dict[str, Any], reads: BinaryReads
) -> None:
    assert binary_reads(policy(**sections)) == reads


def test_other_protocols_have_no_binary_reads() -> None:
    assert binary_reads(ModelPolicy.model_validate({"name": "m", "protocol": "tfserving"})) is None


def test_a_request_decodes_only_what_the_policy_reads_until_a_subject_needs_all() -> None:
    body, length = triton_request(ARRAYS)
    bodies = BinaryBodies(BinaryReads(frozenset({"sex"}), None), length)
    doc = bodies.request_document(body)
    tensors = {t["name"]: t for t in doc["inputs"]}
    assert tensors["sex"]["data"] == ["Female", "Male", "Female"]
    assert "data" not in tensors["pixels"] and "data" not in tensors["age"]
    assert bodies.needs_whole()
    whole = bodies.request_document(body, whole=True)
    assert [t["data"] for t in whole["inputs"]] == [
        list(range(12)), ["Female", "Male", "Female"], [20.0, 45.0, 70.0]
    ]  # fmt: skip
    assert not bodies.needs_whole()
    # The partial reading is completed in place (its header is not parsed again), and ends
    # where decoding every tensor at once would.
    assert whole is doc and tensors["sex"]["data"] is whole["inputs"][1]["data"]
    assert whole == decode_request(body, length).doc


def test_a_tensor_whose_columns_hold_a_read_feature_is_decoded() -> None:
    header = (
        b'{"inputs":[{"name":"X","shape":[1,2],"datatype":"FP32",'
        b'"parameters":{"binary_data_size":8,"columns":["age","hours"]}},'
        b'{"name":"Y","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}'
    )
    body = header + np.array([30, 40, 7], dtype="<f4").tobytes()
    doc = decode_request(body, len(header), only={"hours"}).doc
    assert doc["inputs"][0]["data"] == [30.0, 40.0]
    assert "data" not in doc["inputs"][1]


def test_malformed_framing_is_a_payload_error_and_remembered() -> None:
    body, length = triton_request(ARRAYS)
    bodies = BinaryBodies(BinaryReads(frozenset({"sex"}), None), str(int(length) + 5))
    with pytest.raises(MalformedBinary, match="binary input") as raised:
        bodies.request_document(body)
    assert isinstance(raised.value, PayloadError) and isinstance(raised.value, ValueError)
    assert bodies.malformed


def test_an_answer_changed_is_encoded_at_once_keeping_untouched_sections() -> None:
    doc = {
        "outputs": [
            {"name": "score", "shape": [2], "datatype": "FP32", "data": [0.25, 0.75]},
            {"name": "tags", "shape": [2], "datatype": "BYTES", "data": ["cat", "gorilla"]},
        ]
    }
    original = encode(BinaryBody(doc, "outputs"))
    bodies = BinaryBodies(BinaryReads(frozenset(), frozenset({"tags"})))
    bodies.response = str(original.header_length)
    answer = bodies.response_document(original.body)
    assert "data" not in answer["outputs"][0]  # the score is not read here
    answer["outputs"][1]["data"] = ["cat", ""]
    bodies.encode(answer)
    assert bodies.encoded is not None
    decoded = BinaryBodies(BinaryReads(frozenset(), None))
    decoded.response = str(bodies.encoded.header_length)
    outputs = decoded.response_document(bodies.encoded.body)["outputs"]
    assert [t["data"] for t in outputs] == [[0.25, 0.75], ["cat", ""]]
    score = original.body[original.header_length : original.header_length + 8]
    assert bodies.encoded.body[bodies.encoded.header_length :].startswith(score)


def test_a_value_a_tensor_cannot_hold_fails_where_it_is_written() -> None:
    doc = {"outputs": [{"name": "n", "shape": [1], "datatype": "UINT8", "data": [1]}]}
    original = encode(BinaryBody(doc, "outputs"))
    bodies = BinaryBodies(BinaryReads(frozenset(), None))
    bodies.response = str(original.header_length)
    answer = bodies.response_document(original.body)
    answer["outputs"][0]["data"] = [300]
    with pytest.raises(MalformedBinary, match="do not fit"):
        bodies.encode(answer)
    assert bodies.encoded is None


def test_a_sampled_body_is_decoded_whole_or_only_its_header_when_too_long() -> None:
    body, length = triton_request(ARRAYS)
    raw = RawBody(body, length, "inputs")
    assert [t["name"] for t in raw.document()["inputs"]] == ["pixels", "sex", "age"]
    assert raw.document()["inputs"][1]["data"] == ["Female", "Male", "Female"]
    cut = raw.document(limit=len(body) - 1)
    assert cut["truncated"] is True and cut["bytes"] == len(body)
    assert all("data" not in t for t in cut["header"]["inputs"])
    broken = RawBody(body[:-1], length, "inputs").document()
    assert "malformed_binary" in broken and broken["bytes"] == len(body) - 1
