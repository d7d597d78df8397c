"""Client-given shapes, nesting and counts: refused before they cost more than the body."""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

import orjson
import pytest

from guardproxy.payloads.binary import BinaryBody, BinaryPayloadError, decode_request, encode
from guardproxy.payloads.errors import MAX_ROWS, PayloadError, TooManyValues, over_limit
from guardproxy.payloads.tensors import TensorError, element_count, flatten, shape_size, unpack
from tests.payloads.test_payloads import preset

HUGE = 2**63 - 1  # the largest dim an int64 shape holds


class NotIterable:
    """A value in a tensor's data that fails the test when anything iterates it."""

    def __iter__(self) -> Any:
        raise AssertionError("a value that is not a list was iterated as one")


class Dim(str):
    """A str shape dim that records being multiplied (sequence repetition)."""

    multiplied = 0

    def __rmul__(self, other: object) -> Any:
        type(self).multiplied += 1
        return str.__mul__(self, 1)

    __mul__ = __rmul__


def deep(depth: int) -> list[Any]:
    nested: list[Any] = [0]
    for _ in range(depth):
        nested = [nested]
    return nested


def v2_input(shape: list[Any], data: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "sex", "shape": shape, "datatype": "BYTES", "data": data}]}


def test_nested_data_with_a_part_that_is_not_a_list_is_ragged_not_iterated() -> None:
    # The old loop iterated a long string at every level: 1 MB, 1,000 deep held the loop 24 s.
    with pytest.raises(PayloadError, match="input 'sex': ragged nested data"):
        preset("kserve_v2").feature(v2_input([1], [deep(100), NotIterable()]), "sex")
    with pytest.raises(PayloadError, match="ragged"):
        preset("kserve_v2").feature(v2_input([2], [[[1]], [NotIterable()]]), "sex")


def test_nested_data_is_flattened_level_by_level_when_every_part_is_a_list() -> None:
    doc = v2_input([2, 2], [[[1], [2]], [[3], [4]]])
    assert preset("kserve_v2").feature(doc, "sex") == [1, 2, 3, 4]
    assert flatten(deep(500), lambda: AssertionError()) == [0]
    with pytest.raises(PayloadError, match="3 values for shape"):  # all lists, unequal
        preset("kserve_v2").feature(v2_input([2, 2], [[1, 2], [3]]), "sex")


def test_binary_flattening_refuses_ragged_data_too() -> None:
    doc = v2_input([1], [deep(50), NotIterable()])["inputs"][0]
    body = BinaryBody({"inputs": [doc]}, "inputs")
    with pytest.raises(BinaryPayloadError, match=r"inputs\[0\]: ragged nested data"):
        encode(body)


@pytest.mark.parametrize("dim", [Dim("x"), ["x"], 2.0, True, -1])
def test_a_dim_that_is_not_a_non_negative_int_is_refused_unmultiplied(dim: object) -> None:
    # [1, 400000000, "x"]: an 82-byte body repeated "x" into 400 MB.
    Dim.multiplied = 0
    with pytest.raises(PayloadError, match="input 'sex': shape dims must be non-negative"):
        preset("kserve_v2").feature(v2_input([1, 1000, dim], []), "sex")
    seldon = {"data": {"names": ["sex"], "tensor": {"shape": [1, 1000, dim], "values": []}}}
    with pytest.raises(PayloadError, match=r"data\.tensor: shape dims must be non-negative"):
        preset("seldon_v1").feature(seldon, "sex")
    with pytest.raises(TensorError, match="t: shape dims must be non-negative"):
        element_count([1, 1000, dim], "t")  # type: ignore[list-item]
    assert Dim.multiplied == 0


def test_a_product_of_huge_dims_stops_at_its_bound() -> None:
    # 40,000 dims of 2**63 - 1 made a quadratic big-int product (2.7 s), one of ~760,000
    # digits; past 4,300 digits even the 413's message could not be formatted.
    shape = [1] + [HUGE] * 300
    with pytest.raises(PayloadError, match="more than 4611686018427387904 elements"):
        preset("kserve_v2").feature(v2_input(shape, []), "sex")
    with pytest.raises(TensorError, match="more than 100 elements"):
        shape_size([11, 10], 100, lambda reason: TensorError(f"t: {reason}"))
    assert element_count([HUGE] * 300 + [0], "t") == 0  # a zero dim: empty, however large
    assert shape_size([3, 4], 12, TensorError) == 12


def test_a_binary_tensor_of_absurd_shape_is_refused_with_a_message() -> None:
    tensor = {"name": "sex", "datatype": "BYTES", "shape": [1] + [HUGE] * 300}
    header = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 0}}]})
    with pytest.raises(BinaryPayloadError, match="input 'sex': shape holds more than"):
        decode_request(header, str(len(header)), only=frozenset({"sex"}), max_rows=100)


def test_over_limit_never_formats_an_absurd_count() -> None:
    assert str(TooManyValues(10**5000, 100)) == (
        "a batch of more than 100 rows is over the limit of 100"
    )
    assert over_limit(101, 100) == "a batch of 101 rows is over the limit of 100"


def test_seldon_rows_of_no_values_are_refused_before_they_are_built() -> None:
    # [30000000, 0] with no values: 70 bytes built 30 million empty rows (8.9 s, 2 GB).
    doc = {"data": {"names": ["sex"], "tensor": {"shape": [100_000, 0], "values": []}}}
    with pytest.raises(PayloadError, match=r"data\.tensor: rows of no values"):
        preset("seldon_v1").feature(doc, "sex")
    empty = {"data": {"names": ["sex"], "tensor": {"shape": [0, 3], "values": []}}}
    assert preset("seldon_v1").feature(empty, "sex") == []
    table = {"data": {"names": ["a", "sex"], "tensor": {"shape": [2, 2], "values": [1, 2, 3, 4]}}}
    assert preset("seldon_v1").feature(table, "sex") == [2, 4]


def test_seldon_a_row_shorter_than_the_names_is_a_payload_error() -> None:
    doc = {"data": {"names": ["a", "sex"], "ndarray": [[1, "f"], [2]]}}
    with pytest.raises(PayloadError, match="no value for 'sex'"):
        preset("seldon_v1").feature(doc, "sex")


def test_openai_n_past_the_row_limit_is_refused_before_its_rows_are_built() -> None:
    # n = 300,000,000 in a 56-byte body built a 2.4 GB list.
    doc = {"model": "m", "messages": [], "sex": "Female", "n": MAX_ROWS + 1}
    with pytest.raises(TooManyValues, match=f"{MAX_ROWS + 1} rows is over the limit"):
        preset("openai").feature(doc, "sex")
    doc["n"] = MAX_ROWS
    assert len(preset("openai").feature(doc, "sex")) == MAX_ROWS


def test_bf16_widens_to_the_fp32_whose_upper_half_it_is() -> None:
    # Every one of the 65,536 BF16 bit patterns, as the FP32 with those upper 16 bits; byte by
    # byte, where a Python int per value once held ~47 times the body's size at once.
    halves = list(range(1 << 16))
    raw = struct.pack(f"<{len(halves)}H", *halves)
    got = unpack("BF16", [len(halves)], raw, "input 'x'")
    want = [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]
    assert struct.pack(f"<{len(got)}d", *got) == struct.pack(f"<{len(want)}d", *want)


def test_bf16_decoding_holds_what_its_floats_take() -> None:
    raw = bytes(range(256)) * 2048  # 512 KiB: 262,144 values
    tracemalloc.start()
    try:
        values = unpack("BF16", [len(raw) // 2], raw, "input 'x'")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The floats and their list take 16 times the body; the ints per value took 47 times.
    assert len(values) == len(raw) // 2 and peak < 24 * len(raw)
