"""Property tests of the binary tensor codec, checked against tritonclient's own codec."""

from __future__ import annotations

import contextlib
from typing import Any

import ml_dtypes
import numpy as np
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.utils import np_to_triton_dtype

from guardproxy.payloads.binary import (
    BinaryBody,
    BinaryPayloadError,
    decode_request,
    decode_response,
    encode,
)

from .tritons import flat, same

NUMERIC = [
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
    np.uint64, np.float16, np.float32, np.float64,
]  # fmt: skip
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    kind = draw(st.sampled_from([*NUMERIC, "BYTES", "BF16"]))
    shape = draw(shapes)
    if kind == "BYTES":
        items = st.binary(max_size=12) | st.text(max_size=6).map(str.encode)
        values = draw(st.lists(items, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        array = np.empty(len(values), dtype=np.object_)
        array[:] = values
        return array.reshape(shape)
    if kind == "BF16":
        floats = draw(hnp.arrays(np.float32, shape, elements=st.floats(-1e6, 1e6, width=32)))
        return floats.astype(ml_dtypes.bfloat16)
    return draw(hnp.arrays(np.dtype(kind), shape))


def triton_body(tensors: list[np.ndarray[Any, Any]]) -> tuple[bytes, int | None]:
    inputs = []
    for i, array in enumerate(tensors):
        tensor = triton.InferInput(f"in{i}", list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs)
    return body, json_size


def equal_values(got: list[Any], want: list[Any]) -> bool:
    """Lists equal, NaN equal to NaN."""
    return len(got) == len(want) and all(
        g == w or (g != g and w != w) for g, w in zip(got, want, strict=True)
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(arrays(), min_size=1, max_size=4))
def test_decodes_what_tritonclient_sends(tensors: list[np.ndarray[Any, Any]]) -> None:
    body, json_size = triton_body(tensors)
    doc = decode_request(body, json_size).doc
    for t, array in zip(doc["inputs"], tensors, strict=True):
        assert t["shape"] == list(array.shape)
        assert equal_values(t["data"], flat(array))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(arrays(), min_size=1, max_size=4), st.booleans())
def test_tritonclient_reads_what_we_encode(
    tensors: list[np.ndarray[Any, Any]], binary: bool
) -> None:
    outputs = [
        {
            "name": f"out{i}",
            "datatype": np_to_triton_dtype(a.dtype),
            "shape": list(a.shape),
            "data": flat(a),
        }
        for i, a in enumerate(tensors)
    ]
    names = frozenset() if binary else frozenset(t["name"] for t in outputs)
    if not binary and any(a.dtype in (np.float16, ml_dtypes.bfloat16) for a in tensors):
        return  # tritonclient reads FP16 and BF16 only as binary data
    if not binary and any(a.dtype == np.object_ for a in tensors):
        return  # JSON carries text, not arbitrary bytes
    if not binary and any(a.dtype.kind == "f" and not np.isfinite(a).all() for a in tensors):
        return  # JSON has no NaN or infinity (orjson writes null)
    new = encode(BinaryBody({"outputs": outputs}, "outputs", names=names))
    result = triton.InferenceServerClient.parse_response_body(
        new.body, header_length=new.header_length
    )
    for i, array in enumerate(tensors):
        got = result.as_numpy(f"out{i}")
        if array.dtype.kind == "f" or array.dtype == ml_dtypes.bfloat16:
            assert np.array_equal(got, array, equal_nan=True)
        else:
            assert same(got, array)


@settings(max_examples=100, deadline=None)
@given(st.lists(arrays(), min_size=1, max_size=4))
def test_encode_then_decode_is_the_identity(tensors: list[np.ndarray[Any, Any]]) -> None:
    body, json_size = triton_body(tensors)
    decoded = decode_request(body, json_size)
    again = encode(decoded)
    assert again.body[again.header_length :] == body[json_size:]
    redecoded = decode_request(again.body, again.header_length).doc["inputs"]
    for t, u in zip(decode_request(body, json_size).doc["inputs"], redecoded, strict=True):
        assert equal_values(t["data"], u["data"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(-5, 400) | st.none() | st.text(max_size=5))
def test_any_bytes_decode_or_raise_the_codec_error(body: bytes, length: Any) -> None:
    with contextlib.suppress(BinaryPayloadError):
        decode_response(body, length)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["BOOL", "INT32", "FP16", "BYTES", "UINT64", "BF16"]),
    st.lists(st.integers(-3, 6), max_size=3),
    st.binary(max_size=64),
)
def test_any_tensor_bytes_decode_or_raise(datatype: str, shape: list[int], raw: bytes) -> None:
    import orjson

    tensor = {"name": "t", "datatype": datatype, "shape": shape}
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = orjson.dumps({"outputs": [tensor]})
    try:
        doc = decode_response(header + raw, len(header)).doc
    except BinaryPayloadError:
        return
    assert len(doc["outputs"][0]["data"]) == int(np.prod(shape))
