"""The Open Inference Protocol binary tensor extension (what tritonclient.http sends by default).

A body is a JSON header of `Inference-Header-Content-Length` bytes, then the raw bytes of
each tensor whose `parameters.binary_data_size` is set, in the header's order. Decoding gives
the JSON protocol's document (each binary tensor gets a flat row-major `data` list and loses
`binary_data_size`); encoding writes a changed document back, keeping the bytes of every
tensor whose values did not change.

>>> from guardproxy.payloads.tensors import pack
>>> header = b'{"outputs":[{"name":"p","shape":[2],"datatype":"FP32",'
>>> header += b'"parameters":{"binary_data_size":8}}]}'
>>> answer = decode_response(header + pack("FP32", [0.5, 2.0], "p"), str(len(header)))
>>> answer.doc["outputs"][0]["data"]
[0.5, 2.0]
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, NoReturn

import orjson

from .codec import repeats_a_key
from .errors import RepeatedKey, TooManyValues
from .tensors import DATATYPES, TensorError, element_count, flatten, pack, same_values, unpack

__all__ = [
    "HEADER",
    "BinaryBody",
    "BinaryPayloadError",
    "Encoded",
    "decode",
    "decode_request",
    "decode_response",
    "decode_rest",
    "encode",
    "header_length",
]

HEADER = "Inference-Header-Content-Length"
_SIZE = "binary_data_size"

Key = Literal["inputs", "outputs"]
Section = bytes | memoryview  # a tensor's raw bytes: decoded sections are views of the body


class BinaryPayloadError(TensorError):
    """A binary tensor body whose header, sizes or tensors disagree."""


@dataclass(slots=True)
class BinaryBody:
    """A decoded body: the JSON-equivalent `doc` and the raw bytes each binary tensor had."""

    doc: dict[str, Any]
    key: Key
    sections: dict[str, Section] = field(default_factory=dict)
    names: frozenset[str] = frozenset()  # every tensor name of the original body
    binary_new: bool = True  # whether tensors added to doc[key] are written as binary


class Encoded(NamedTuple):
    """An encoded body and the value of its Inference-Header-Content-Length."""

    body: bytes
    header_length: int


def header_length(value: str | int | None, body_length: int) -> int:
    """The JSON header's length from the HTTP header (absent: the whole body is JSON)."""
    if value is None:
        return body_length
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 12):
            raise BinaryPayloadError(f"{HEADER} is not a byte count: {value[:40]!r}")
        value = int(text)
    if value < 0 or value > body_length:
        raise BinaryPayloadError(f"{HEADER} {value} is outside a body of {body_length} bytes")
    return value


def decode_request(
    body: bytes,
    length: str | int | None,
    only: Collection[str] | None = None,
    max_rows: int | None = None,
) -> BinaryBody:
    """Decode a request body (its binary tensors are the inputs)."""
    return decode(body, length, "inputs", only, max_rows)


def decode_response(
    body: bytes,
    length: str | int | None,
    only: Collection[str] | None = None,
    max_rows: int | None = None,
) -> BinaryBody:
    """Decode an answer body (its binary tensors are the outputs)."""
    return decode(body, length, "outputs", only, max_rows)


def decode(
    body: bytes,
    length: str | int | None,
    key: Key,
    only: Collection[str] | None = None,
    max_rows: int | None = None,
) -> BinaryBody:
    """Decode a body; with `only`, other binary tensors keep their bytes and get no `data`.

    A tensor is decoded when `only` names it or one of its columns (a 2-D tabular tensor's
    `columns` parameter, its own or the body's, as the JSON payloads read features). The
    sections are views of `body`, not copies: a large tensor nobody reads costs nothing.
    With `max_rows`, a tensor `only` names that holds more rows (values per column; of an
    answer, its first dimension, every output when `only` is None) raises TooManyValues
    before any of it is decoded: a BYTES element costs the loop ~0.4 µs.
    A request's JSON header that names a key twice in one object is RepeatedKey.
    """
    split = header_length(length, len(body))
    view = memoryview(body)
    doc = _header(view[:split], key == "inputs")
    tensors = _tensors(doc, key)
    # Column names are rare: look for them only when the header mentions them at all.
    columns = only is not None and body.find(b'"columns"', 0, split) >= 0
    shared = _columns(doc) if columns else []
    # Once per body, not per tensor: tensors x shared names would let a client hold the loop.
    shared_wanted = only is not None and _wanted(shared, only)
    sections: dict[str, Section] = {}
    names: list[str] = []
    pos, end = split, len(body)
    for index, t in enumerate(tensors):
        if type(t) is not dict:
            raise BinaryPayloadError(f"{key}[{index}] is not a JSON object")
        name, params = t.get("name"), t.get("parameters")
        if type(name) is str:
            names.append(name)
        size = params.get(_SIZE) if type(params) is dict else None
        if size is None:
            continue
        if type(name) is not str or not (  # what decoding needs, one test for the common case
            type(size) is int
            and size >= 0
            and t.get("datatype") in DATATYPES
            and type(t.get("shape")) is list
            and "data" not in t
        ):
            _refuse(t, size, f"{key}[{index}]")
        if name in sections:
            raise BinaryPayloadError(f"{_where(key, name)} appears twice")
        if pos + size > end:
            raise BinaryPayloadError(
                f"{_where(key, name)}: binary data ends at {end - split} bytes"
            )
        raw = sections[name] = view[pos : pos + size]
        pos += size
        answer = key == "outputs"
        if answer and max_rows is not None and (only is None or name in only):
            _check_answer_rows(t["shape"], max_rows)
        if only is None:
            _decoded(t, raw, key, name)
        elif name in only or (columns and _names_a_column(t, shared_wanted, only)):
            if max_rows is not None and not answer:  # an input whole, a column row by row
                width = 1 if name in only else len(_columns(t) or shared)
                _check_rows(t["shape"], width, max_rows)
            _decoded(t, raw, key, name)
    if pos != end:
        raise BinaryPayloadError(
            f"binary_data_size values add up to {pos - split} bytes; the body has {end - split}"
        )
    return BinaryBody(doc, key, sections, frozenset(names), binary_new=bool(sections))


def decode_rest(body: BinaryBody) -> None:
    """Decode, in place, every binary tensor that `decode(..., only=...)` left as bytes."""
    sections = body.sections
    for t in _tensors(body.doc, body.key):
        name = t.get("name")
        if "data" not in t and name in sections:
            _decoded(t, sections[name], body.key, name)


def _where(key: Key, name: object) -> str:
    """How errors name a tensor: `input 'age'`."""
    return f"{key[:-1]} {name!r}"


def _columns(holder: dict[str, Any]) -> list[Any]:
    """A tensor's (or a body's) column names: `parameters.columns`, else `columns`."""
    params = holder.get("parameters")
    names = params.get("columns") if isinstance(params, dict) else None
    names = names if names is not None else holder.get("columns")
    return names if isinstance(names, list) else []


def _names_a_column(t: dict[str, Any], shared_wanted: bool, only: Collection[str]) -> bool:
    """Whether one of the tensor's columns (else, as said once, the body's) is wanted."""
    own = _columns(t)
    return _wanted(own, only) if own else shared_wanted


def _wanted(columns: list[Any], only: Collection[str]) -> bool:
    """Whether `only` names one of the columns."""
    return any(isinstance(name, str) and name in only for name in columns)


def _check_rows(shape: list[Any], width: int, limit: int) -> None:
    """Raise TooManyValues when a tensor holds more than `limit` rows of `width` values."""
    try:
        rows = element_count(shape, "") // max(1, width)
    except TensorError:
        return  # decoding names the fault
    if rows > limit:
        raise TooManyValues(rows, limit)


def _check_answer_rows(shape: list[Any], limit: int) -> None:
    """Raise TooManyValues when an output's first dimension (its rows) is over `limit`."""
    rows = shape[0] if shape else 1
    if type(rows) is int and rows > limit:  # a dimension that is no count: decoding says so
        raise TooManyValues(rows, limit)


def _header(data: memoryview, unique: bool) -> dict[str, Any]:
    """The JSON header parsed; with `unique`, RepeatedKey when an object repeats a key."""
    raw = bytes(data) if unique else None  # the check counts bytes: a header is small
    try:
        doc = orjson.loads(data if raw is None else raw)
    except orjson.JSONDecodeError as exc:
        raise BinaryPayloadError(f"the JSON header is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BinaryPayloadError("the JSON header is not a JSON object")
    if raw is not None and repeats_a_key(raw, doc):
        raise RepeatedKey()
    return doc


def _tensors(doc: dict[str, Any], key: Key) -> list[Any]:
    tensors = doc.get(key, [])
    if not isinstance(tensors, list):
        raise BinaryPayloadError(f"{key} is not a list")
    return tensors


def _refuse(t: dict[str, Any], size: Any, where: str) -> NoReturn:
    """Raise the first reason a tensor's binary description is wrong."""
    if type(size) is not int or size < 0:
        raise BinaryPayloadError(f"{where}: binary_data_size must be a byte count, got {size!r}")
    if not isinstance(t.get("name"), str):
        raise BinaryPayloadError(f"{where}: a binary tensor needs a name")
    if t.get("datatype") not in DATATYPES:
        raise BinaryPayloadError(f"{where}: unknown datatype {t.get('datatype')!r}")
    if not isinstance(t.get("shape"), list):
        raise BinaryPayloadError(f"{where}: a binary tensor needs a shape")
    raise BinaryPayloadError(f"{where}: has both data and binary_data_size")


def _decoded(t: dict[str, Any], raw: Section, key: Key, name: str) -> None:
    try:
        # The tensor's name stands for where it is; the full place is built only on an error.
        t["data"] = unpack(t["datatype"], t["shape"], raw, name)
    except TensorError as exc:
        where = _where(key, name)
        raise BinaryPayloadError(where + str(exc)[len(name) :]) from None
    params = {k: v for k, v in t["parameters"].items() if k != _SIZE}
    if params:
        t["parameters"] = params
    else:
        del t["parameters"]


def encode(body: BinaryBody) -> Encoded:
    """The body for `body.doc` as it is now: unchanged tensors keep their original bytes."""
    tensors = _tensors(body.doc, body.key)
    header_tensors: list[Any] = []
    parts: list[Section] = []
    for index, t in enumerate(tensors):
        entry, raw = _encoded(body, t, f"{body.key}[{index}]")
        header_tensors.append(entry)
        if raw is not None:
            parts.append(raw)
    header = orjson.dumps({**body.doc, body.key: header_tensors})
    return Encoded(b"".join((header, *parts)), len(header))


def _encoded(body: BinaryBody, t: Any, where: str) -> tuple[Any, Section | None]:
    """The tensor's header entry and its binary section (None: it stays JSON)."""
    if not isinstance(t, dict):
        raise BinaryPayloadError(f"{where} is not a JSON object")
    name = t.get("name")
    original = body.sections.get(name) if isinstance(name, str) else None
    if "data" not in t:  # not decoded (or shared memory): as it came
        return (t, None) if original is None else (_with_size(t, len(original)), original)
    binary = original is not None or (name not in body.names and body.binary_new)
    if not binary:
        return t, None
    raw = _raw(t, original, where)
    return _with_size(t, len(raw)), raw


def _raw(t: Mapping[str, Any], original: Section | None, where: str) -> Section:
    datatype, shape, data = t.get("datatype"), t.get("shape"), _flat(t["data"], where)
    if not isinstance(datatype, str) or not isinstance(shape, list):
        raise BinaryPayloadError(f"{where}: a binary tensor needs a datatype and a shape")
    try:
        if element_count(shape, where) != len(data):
            raise BinaryPayloadError(f"{where}: {len(data)} values for shape {shape}")
        if original is not None and same_values(datatype, shape, data, original):
            return original
        return pack(datatype, data, where)
    except BinaryPayloadError:
        raise
    except TensorError as exc:
        raise BinaryPayloadError(str(exc)) from None


def _flat(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise BinaryPayloadError(f"data must be a list, got {type(data).__name__}")
    return flatten(data, lambda: BinaryPayloadError(f"{where}: ragged nested data"))


def _with_size(t: Mapping[str, Any], size: int) -> dict[str, Any]:
    params = t.get("parameters")
    entry = {k: v for k, v in t.items() if k != "data"}
    entry["parameters"] = {**(params if isinstance(params, dict) else {}), _SIZE: size}
    return entry
