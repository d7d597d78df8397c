"""ModelInfer messages as Open Inference Protocol JSON documents, and changes written back.

The documents have the JSON protocol's shape, the same the binary codec produces: tensors
with name, datatype, shape, optional parameters and a flat row-major `data` list, read from
`raw_*_contents` (the shared raw tensor format) or from the typed `contents`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ..payloads.errors import TooManyValues
from ..payloads.tensors import (
    TensorError,
    as_text,
    element_count,
    flatten,
    pack,
    same_values,
    unpack,
)
from .generated import grpc_predict_v2_pb2 as pb

__all__ = [
    "MessageRecord",
    "apply_response",
    "parameters",
    "request_document",
    "request_header",
    "response_document",
]

# datatype -> the InferTensorContents field that carries it (FP16 and BF16 only travel raw)
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_INT64_MAX = (1 << 63) - 1


def parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """An InferParameter map as plain values (bool, int, float or str)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        kind = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, kind) if kind else None
    return out


def _set_parameter(target: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if value > _INT64_MAX:
            target.uint64_param = value
        else:
            target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def request_document(
    msg: pb.ModelInferRequest,
    only: Collection[str] | None = None,
    max_rows: int | None = None,
) -> dict[str, Any]:
    """The request as a JSON-protocol document (TensorError on sizes that disagree).

    With `only`, the other inputs are described without `data` (a gRPC parameter is a
    scalar, so no input names columns to read by); with `max_rows`, an input `only` names
    that holds more values raises TooManyValues before any of it is decoded.
    """
    raw = _raw(msg.raw_input_contents, len(msg.inputs), "raw_input_contents")
    doc = request_header(msg)
    inputs = doc["inputs"] = []
    for i, t in enumerate(msg.inputs):
        named = only is not None and t.name in only
        if named and max_rows is not None:
            rows = element_count(t.shape, f"input {t.name!r}")
            if rows > max_rows:
                raise TooManyValues(rows, max_rows)
        where = f"input {t.name!r}"
        if only is None or named:
            inputs.append(_tensor(t, raw[i] if raw else None, where))
        else:
            inputs.append(_tensor(t, None, where, decode=False))
    doc["outputs"] = [_requested(t) for t in msg.outputs]
    return doc


class MessageRecord:
    """A request message kept for a sample, decoded whole when the sample is written (off path)."""

    __slots__ = ("_whole", "message")

    def __init__(self, message: pb.ModelInferRequest) -> None:
        self.message = message
        self._whole: dict[str, Any] | None = None

    def whole(self) -> dict[str, Any]:
        """Every tensor decoded, once (a row's subject is all of its inputs); TensorError."""
        if self._whole is None:
            self._whole = request_document(self.message)
        return self._whole

    def document(self, limit: int | None = None) -> dict[str, Any]:
        """Every tensor decoded; over `limit` bytes the tensors without their data."""
        size = self.message.ByteSize()
        try:
            if limit is None or size <= limit:
                return self.whole()
            header = request_document(self.message, only=frozenset())
        except TensorError as exc:
            return {"malformed_tensors": str(exc), "bytes": size}
        return {"truncated": True, "bytes": size, "data": "withheld", "header": header}


def request_header(msg: pb.ModelInferRequest) -> dict[str, Any]:
    """The request's document without its tensors: model, version, id, parameters."""
    return _header(msg.model_name, msg.model_version, msg.id, msg.parameters)


def response_document(msg: pb.ModelInferResponse) -> dict[str, Any]:
    """The answer as a JSON-protocol document (TensorError on sizes that disagree)."""
    raw = _raw(msg.raw_output_contents, len(msg.outputs), "raw_output_contents")
    doc = _header(msg.model_name, msg.model_version, msg.id, msg.parameters)
    doc["outputs"] = [
        _tensor(t, raw[i] if raw else None, f"output {t.name!r}") for i, t in enumerate(msg.outputs)
    ]
    return doc


def _header(
    model: str, version: str, request_id: str, params: Mapping[str, pb.InferParameter]
) -> dict[str, Any]:
    doc: dict[str, Any] = {"model_name": model, "model_version": version}
    if request_id:
        doc["id"] = request_id
    if params:
        doc["parameters"] = parameters(params)
    return doc


def _raw(contents: Sequence[bytes], tensors: int, where: str) -> Sequence[bytes]:
    """The raw contents, checked against the tensors (empty when the contents are typed).

    Not copied into a list: reading an entry copies its bytes, so only decoded ones are read.
    """
    if contents and len(contents) != tensors:
        raise TensorError(f"{where}: {len(contents)} entries for {tensors} tensors")
    return contents


def _tensor(t: Any, raw: bytes | None, where: str, decode: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
    if t.parameters:
        doc["parameters"] = parameters(t.parameters)
    if not decode:
        return doc
    if raw is not None:
        doc["data"] = unpack(t.datatype, doc["shape"], raw, where)
    elif t.HasField("contents"):
        doc["data"] = _typed(t.datatype, doc["shape"], t.contents, where)
    return doc


def _typed(datatype: str, shape: list[int], contents: Any, where: str) -> list[Any]:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise TensorError(f"{where}: {datatype} has no typed contents, only raw bytes")
    found = getattr(contents, field)
    if len(found) != element_count(shape, where):  # before any value becomes a Python object
        raise TensorError(f"{where}: {len(found)} values for shape {shape}")
    values = list(found)
    if datatype == "BYTES":
        return [as_text(v) for v in values]
    return values


def _requested(t: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": t.name}
    if t.parameters:
        doc["parameters"] = parameters(t.parameters)
    return doc


def apply_response(msg: pb.ModelInferResponse, doc: Mapping[str, Any]) -> None:
    """Write a changed document's outputs and parameters into the answer, in place.

    Outputs keep the answer's form (raw or typed; raw for all when a new one is FP16/BF16),
    and an output whose values did not change keeps its raw bytes.
    """
    outputs = doc.get("outputs")
    if not isinstance(outputs, list):
        raise TensorError("answer document: outputs must be a list")
    old_raw = dict(zip((t.name for t in msg.outputs), msg.raw_output_contents, strict=False))
    use_raw = bool(msg.raw_output_contents) or any(
        isinstance(t, dict) and t.get("datatype") not in _CONTENTS for t in outputs
    )
    tensors = [_output(t, i) for i, t in enumerate(outputs)]
    raws = [_raw_bytes(t, old_raw.get(t.name), outputs[i]) for i, t in enumerate(tensors)]
    del msg.outputs[:]
    del msg.raw_output_contents[:]
    for tensor, _raw, src in zip(tensors, raws, outputs, strict=True):
        if not use_raw:
            _fill_typed(tensor, src)
        msg.outputs.append(tensor)
    if use_raw:
        msg.raw_output_contents.extend(raws)
    _replace_parameters(msg.parameters, doc.get("parameters") or {})


def _output(t: Any, index: int) -> pb.ModelInferResponse.InferOutputTensor:
    if not isinstance(t, dict) or not isinstance(t.get("data"), list):
        raise TensorError(f"answer document: outputs[{index}] needs a data list")
    tensor = pb.ModelInferResponse.InferOutputTensor(
        name=str(t.get("name", "")), datatype=str(t.get("datatype", "")), shape=t.get("shape", [])
    )
    _replace_parameters(tensor.parameters, t.get("parameters") or {})
    return tensor


def _raw_bytes(tensor: Any, old: bytes | None, src: Mapping[str, Any]) -> bytes:
    shape, where = list(tensor.shape), f"output {tensor.name!r}"
    data = _flat(src["data"], where)
    if len(data) != element_count(shape, where):
        raise TensorError(f"{where}: {len(data)} values for shape {shape}")
    if old is not None and same_values(tensor.datatype, shape, data, old):
        return old
    return pack(tensor.datatype, data, where)


def _fill_typed(tensor: Any, src: Mapping[str, Any]) -> None:
    field, data = _CONTENTS[tensor.datatype], _flat(src["data"], f"output {tensor.name!r}")
    if tensor.datatype == "BYTES":
        data = [v.encode() if isinstance(v, str) else v for v in data]
    getattr(tensor.contents, field).extend(data)


def _flat(data: list[Any], where: str) -> list[Any]:
    return flatten(data, lambda: TensorError(f"{where}: ragged nested data"))


def _replace_parameters(target: Any, values: Mapping[str, Any]) -> None:
    target.clear()
    for key, value in values.items():
        _set_parameter(target[str(key)], value)
