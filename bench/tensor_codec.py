"""Micro-benchmark: raw tensor bytes to JSON-protocol lists, four ways, for 1 and 1000 rows.

    .venv/bin/python -m bench.tensor_codec [--columns 4] [--repeat 2000]

guardproxy.payloads.tensors decodes with memoryview.cast (struct for FP16 and big-endian
hosts) and encodes with struct; this prints why, as µs per tensor.
"""

from __future__ import annotations

import argparse
import array
import struct
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np

from guardproxy.payloads.tensors import pack, unpack


def decoders(raw: bytes, count: int) -> dict[str, Callable[[], list[Any]]]:
    """Ways to turn FP32 bytes into a list of Python floats."""
    return {
        "tensors.unpack": lambda: unpack("FP32", [count], raw, "t"),
        "struct.unpack": lambda: list(struct.unpack(f"<{count}f", raw)),
        "memoryview.cast": lambda: memoryview(raw).cast("f").tolist(),
        "array": lambda: array.array("f", raw).tolist(),
        "numpy.frombuffer": lambda: np.frombuffer(raw, dtype="<f4").tolist(),
    }


def encoders(values: list[float]) -> dict[str, Callable[[], bytes]]:
    """Ways to turn a list of Python floats into FP32 bytes."""
    count = len(values)
    return {
        "tensors.pack": lambda: pack("FP32", values, "t"),
        "struct.pack": lambda: struct.pack(f"<{count}f", *values),
        "array": lambda: array.array("f", values).tobytes(),
        "numpy.asarray": lambda: np.asarray(values, dtype="<f4").tobytes(),
    }


def best(fn: Callable[[], object], repeat: int) -> float:
    """The best of 5 runs, µs per call."""
    return min(timeit.repeat(fn, number=repeat, repeat=5)) / repeat * 1e6


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    for rows in (1, 1000):
        values = [float(i) / 7 for i in range(rows * args.columns)]
        raw = pack("FP32", values, "t")
        label = f"{rows:>4} rows x {args.columns}"
        for name, fn in decoders(raw, len(values)).items():
            print(f"decode {label}  {name:<18} {best(fn, args.repeat):8.2f} µs")
        for name, encode in encoders(values).items():
            print(f"encode {label}  {name:<18} {best(encode, args.repeat):8.2f} µs")


if __name__ == "__main__":
    main()
