"""Tensors for every OIP datatype, as numpy arrays tritonclient sends and reads."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

ROWS = 3


def tensors(rows: int = ROWS) -> dict[str, np.ndarray[Any, Any]]:
    """One [rows, 2] array per datatype, with each type's edge values."""
    rng = np.random.default_rng(7)
    out: dict[str, np.ndarray[Any, Any]] = {
        "BOOL": rng.integers(0, 2, (rows, 2)).astype(np.bool_),
        "BYTES": np.array(
            [[b"gorilla", "caf\u00e9".encode()], [b"", b"\xff\x00 not utf-8"]] * rows,
            dtype=np.object_,
        )[:rows],
        "FP16": np.array([[1.5, -0.0], [65504.0, 6e-8]] * rows, dtype=np.float16)[:rows],
        "BF16": np.array([[1.5, -2.0], [3.0e38, 1.0]] * rows, dtype=ml_dtypes.bfloat16)[:rows],
        "FP32": rng.standard_normal((rows, 2)).astype(np.float32),
        "FP64": np.array([[np.pi, -1e308], [5e-324, 0.1]] * rows, dtype=np.float64)[:rows],
    }
    for bits in (8, 16, 32, 64):
        for kind, dtype in (("INT", np.dtype(f"int{bits}")), ("UINT", np.dtype(f"uint{bits}"))):
            info = np.iinfo(dtype)
            out[f"{kind}{bits}"] = np.array([[info.min, info.max], [0, 1]] * rows, dtype=dtype)[
                :rows
            ]
    return out


def flat(array: np.ndarray[Any, Any]) -> list[Any]:
    """The values the JSON protocol carries for an array: text for UTF-8 BYTES."""
    if array.dtype == ml_dtypes.bfloat16:
        array = array.astype(np.float32)
    values = array.flatten().tolist()
    if array.dtype == np.object_:
        return [_text(v) for v in values]
    return values


def _text(value: bytes) -> str | bytes:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value


def same(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> bool:
    """Arrays equal in dtype, shape and values (BYTES compared element by element)."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    if want.dtype == ml_dtypes.bfloat16:
        return bool(np.array_equal(got.astype(np.float32), want.astype(np.float32)))
    return bool(np.array_equal(got, want))
