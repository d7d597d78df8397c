"""Raw Open Inference Protocol tensor bytes: flat little-endian, row-major, no padding.

One format serves both the HTTP binary tensor extension and gRPC's `raw_input_contents` /
`raw_output_contents`. BYTES elements are each a 4-byte little-endian length then the bytes.
Values decode to the JSON protocol's Python forms: bool, int, float, and str for BYTES
(bytes when an element is not UTF-8, so nothing is lost).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

__all__ = [
    "DATATYPES",
    "MAX_ELEMENTS",
    "TensorError",
    "element_count",
    "flatten",
    "pack",
    "same_values",
    "shape_size",
    "unpack",
]

_LENGTH = struct.Struct("<I")


class TensorError(ValueError):
    """Tensor bytes that do not match their datatype or shape."""


# datatype -> (struct format character, bytes per element); BYTES is variable-sized.
_FIXED: dict[str, tuple[str, int]] = {
    "BOOL": ("?", 1),
    "UINT8": ("B", 1),
    "UINT16": ("H", 2),
    "UINT32": ("I", 4),
    "UINT64": ("Q", 8),
    "INT8": ("b", 1),
    "INT16": ("h", 2),
    "INT32": ("i", 4),
    "INT64": ("q", 8),
    "FP16": ("e", 2),
    "FP32": ("f", 4),
    "FP64": ("d", 8),
    "BF16": ("H", 2),  # the upper half of an FP32; converted below
}
DATATYPES = frozenset((*_FIXED, "BYTES"))

# memoryview.cast reads native order; it is the fastest decoder when native is little-endian
# and the native size is the standard one (FP16 has no memoryview format).
_CAST = frozenset(
    fmt
    for fmt, size in _FIXED.values()
    if sys.byteorder == "little" and fmt != "e" and struct.calcsize(fmt) == size
)


# More elements than any body holds: a product past it stops growing into a huge integer.
MAX_ELEMENTS = 2**62


def shape_size(dims: Sequence[object], bound: int, error: Callable[[str], Exception]) -> int:
    """The product of `dims`, each a non-negative int; error(reason) on a bad dim or past `bound`.

    Never math.prod on a client's shape: a str or list dim repeats a sequence (a few bytes of
    shape, gigabytes of memory), and thousands of huge dims make a quadratic integer product.
    """
    for dim in dims:
        if type(dim) is not int or dim < 0:
            raise error(f"shape dims must be non-negative integers, not {_brief(dim)}")
    if 0 in dims:  # the product is 0 however large the rest; else it only grows
        return 0
    size = 1
    for dim in cast(Sequence[int], dims):
        size *= dim
        if size > bound:
            raise error(f"shape holds more than {bound} elements")
    return size


def _brief(value: object) -> str:
    """A dim as an error names it: a str or list one, or a huge int, only by its type."""
    return repr(value) if type(value) is int and value.bit_length() < 64 else type(value).__name__


def element_count(shape: Sequence[object], where: str) -> int:
    """The number of elements a shape holds (TensorError on a bad dim or past MAX_ELEMENTS)."""
    return shape_size(shape, MAX_ELEMENTS, lambda reason: TensorError(f"{where}: {reason}"))


def flatten(data: list[Any], error: Callable[[], Exception]) -> list[Any]:
    """Nested row-major data made flat, one level at a time (error() when it is ragged).

    A level is taken only when every part is a list: a part that is not (a string, most
    harmfully) would otherwise be iterated, or copied again at every deeper level.
    """
    while data and type(data[0]) is list:
        if not all(type(part) is list for part in data):
            raise error()
        data = [v for part in data for v in part]
    return data


def unpack(datatype: str, shape: Sequence[int], raw: bytes | memoryview, where: str) -> list[Any]:
    """The flat values of one tensor's raw bytes (TensorError when sizes disagree)."""
    count = element_count(shape, where)
    if datatype == "BYTES":
        return _unpack_bytes(raw, count, where)
    spec = _FIXED.get(datatype)
    if spec is None:
        raise TensorError(f"{where}: unknown datatype {datatype!r}")
    fmt, size = spec
    if len(raw) != count * size:
        raise TensorError(
            f"{where}: {len(raw)} bytes for {count} {datatype} elements ({count * size} expected)"
        )
    if datatype == "BF16":
        return _from_bf16(raw, count)
    if fmt in _CAST:
        view: Any = memoryview(raw)  # the format is a runtime str, which the stubs cannot type
        return view.cast(fmt).tolist()  # type: ignore[no-any-return]
    return list(struct.unpack(f"<{count}{fmt}", raw))


def _unpack_bytes(raw: bytes | memoryview, count: int, where: str) -> list[Any]:
    if count > len(raw) // 4:  # each element needs its 4-byte length: bounds the loop first
        raise TensorError(f"{where}: {len(raw)} bytes cannot hold {count} BYTES elements")
    view = memoryview(raw)
    values: list[Any] = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(view):
            raise TensorError(f"{where}: BYTES element {len(values)} is cut off")
        (length,) = _LENGTH.unpack_from(view, pos)
        end = pos + 4 + length
        if end > len(view):
            raise TensorError(f"{where}: BYTES element {len(values)} runs past the tensor")
        values.append(as_text(bytes(view[pos + 4 : end])))
        pos = end
    if pos != len(view):
        raise TensorError(f"{where}: {len(view) - pos} bytes after {count} BYTES elements")
    return values


def as_text(data: bytes) -> str | bytes:
    """A BYTES element as text when it is UTF-8, else the bytes themselves (nothing lost)."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


def _from_bf16(raw: bytes | memoryview, count: int) -> list[Any]:
    """BF16 values as floats: each the upper half of a little-endian FP32.

    Widened byte by byte, not through a Python int per value (which held ~47 times the
    body's size at once).
    """
    view = memoryview(raw)
    words = bytearray(4 * count)
    words[2::4] = view[0::2]
    words[3::4] = view[1::2]
    if "f" in _CAST:
        return memoryview(words).cast("f").tolist()
    return list(struct.unpack(f"<{count}f", words))


def pack(datatype: str, values: Sequence[Any], where: str) -> bytes:
    """Raw bytes of flat values (TensorError on a value the datatype cannot hold)."""
    if datatype == "BYTES":
        return _pack_bytes(values, where)
    spec = _FIXED.get(datatype)
    if spec is None:
        raise TensorError(f"{where}: unknown datatype {datatype!r}")
    fmt = spec[0]
    if datatype == "BF16":
        values = _to_bf16(values, where)
    try:
        return struct.pack(f"<{len(values)}{fmt}", *values)
    except (struct.error, TypeError, OverflowError) as exc:
        raise TensorError(f"{where}: values do not fit {datatype}: {exc}") from None


def _pack_bytes(values: Sequence[Any], where: str) -> bytes:
    parts: list[bytes] = []
    for value in values:
        data = value.encode() if isinstance(value, str) else value
        if not isinstance(data, bytes | bytearray):
            raise TensorError(f"{where}: BYTES element {value!r} is not text or bytes")
        parts.append(_LENGTH.pack(len(data)))
        parts.append(bytes(data))
    return b"".join(parts)


def _to_bf16(values: Sequence[Any], where: str) -> list[int]:
    try:
        words = struct.unpack(f"<{len(values)}I", struct.pack(f"<{len(values)}f", *values))
    except (struct.error, TypeError, OverflowError) as exc:
        raise TensorError(f"{where}: values do not fit BF16: {exc}") from None
    return [w >> 16 for w in words]  # truncation, as a float32 -> bfloat16 cast of raw bits


def same_values(datatype: str, shape: Sequence[int], values: Any, raw: bytes | memoryview) -> bool:
    """True when `values` are what `raw` already holds, so `raw` can be kept byte for byte."""
    if type(values) is not list:
        return False
    try:
        if pack(datatype, values, "tensor") == raw:
            return True
        return unpack(datatype, shape, raw, "tensor") == values  # e.g. BOOL bytes other than 1
    except TensorError:
        return False
