"""ModelInfer messages as documents: only the tensors asked for, row limits, sample records."""

from __future__ import annotations

from typing import Any

import pytest

from guardproxy.grpc.documents import MessageRecord, apply_response, request_document
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.payloads.errors import TooManyValues
from guardproxy.payloads.tensors import TensorError, pack
from tests.payloads.test_bounded_work import HUGE, NotIterable, deep


def message(rows: int = 2, sex_raw: bytes | None = None) -> pb.ModelInferRequest:
    """`sex` (BYTES) and `image` (UINT8, 4 a row) inputs as raw contents; `columns` named."""
    msg = pb.ModelInferRequest(model_name="m", id="r-1")
    msg.parameters["columns"].string_param = "sex,image"  # a scalar: no column list
    msg.inputs.add(name="sex", datatype="BYTES", shape=[rows])
    msg.raw_input_contents.append(sex_raw or pack("BYTES", ["Female"] * rows, "sex"))
    msg.inputs.add(name="image", datatype="UINT8", shape=[rows, 4])
    msg.raw_input_contents.append(bytes(range(4)) * rows)
    msg.inputs[1].parameters["columns"].string_param = "a,b,c,d"
    return msg


def test_only_the_inputs_asked_for_are_decoded() -> None:
    doc = request_document(message(), only=frozenset({"sex"}), max_rows=2)
    sex, image = doc["inputs"]
    assert sex["data"] == ["Female", "Female"]
    assert image == {
        "name": "image",
        "datatype": "UINT8",
        "shape": [2, 4],
        "parameters": {"columns": "a,b,c,d"},
    }
    assert request_document(message())["inputs"][1]["data"] == [0, 1, 2, 3] * 2


def test_an_input_over_max_rows_is_refused_before_its_bytes_are_read() -> None:
    msg = message(rows=3, sex_raw=b"\xff" * 5)  # no BYTES framing: decoding would fail
    with pytest.raises(TooManyValues, match="a batch of 3 rows is over the limit of 2"):
        request_document(msg, only=frozenset({"sex"}), max_rows=2)
    with pytest.raises(ValueError, match="BYTES"):
        request_document(msg, only=frozenset({"sex"}), max_rows=3)


def test_a_sample_keeps_the_whole_message_within_its_limit() -> None:
    record = MessageRecord(message())
    assert record.document()["inputs"][1]["data"] == [0, 1, 2, 3] * 2
    cut = record.document(limit=10)
    assert cut["truncated"] and cut["bytes"] == message().ByteSize()
    assert "data" not in cut["header"]["inputs"][0]
    broken = MessageRecord(message(sex_raw=b"\xff" * 5))
    assert "BYTES" in broken.document()["malformed_tensors"]
    assert record.whole() is record.whole()  # decoded once


def test_an_absurd_shape_is_refused_without_its_big_int_product() -> None:
    # 40,000 dims of 2**63 - 1 (a 360 KB message): a 2.7 s product, and a count of ~760,000
    # digits that even the refusal could not format (ValueError).
    msg = message()
    msg.inputs[0].shape[:] = [1] + [HUGE] * 300
    with pytest.raises(TensorError, match="input 'sex': shape holds more than"):
        request_document(msg, only=frozenset({"sex"}), max_rows=2)


def test_changed_outputs_with_ragged_data_are_refused_not_iterated() -> None:
    data: list[Any] = [deep(50), NotIterable()]
    doc = {"outputs": [{"name": "p", "datatype": "FP32", "shape": [1], "data": data}]}
    with pytest.raises(TensorError, match="output 'p': ragged nested data"):
        apply_response(pb.ModelInferResponse(model_name="m"), doc)
