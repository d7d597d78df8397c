"""A gRPC load generator (ghz is neither in Debian nor on PyPI): grpc.aio unary ModelInfer calls
at a fixed concurrency, one channel per worker; prints the same JSON summary as bench.loadgen."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence

from grpc import aio

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import v2_request
from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.payloads.tensors import pack

from .grpc_upstream import INFER
from .loadgen import Tally
from .upstream import new_loop


def requests(rows: int, model: str = "adult") -> list[bytes]:
    """`rows` single-row ModelInferRequests of Adult rows, raw tensors, serialised."""
    out = []
    for row in list(adult_rows())[:rows]:
        request = pb.ModelInferRequest(model_name=model)
        for tensor in v2_request([row])["inputs"]:
            name, datatype = tensor["name"], tensor["datatype"]
            request.inputs.add(name=name, datatype=datatype, shape=tensor["shape"])
            request.raw_input_contents.append(pack(datatype, tensor["data"], name))
        out.append(request.SerializeToString())
    return out


async def worker(target: str, bodies: list[bytes], deadline: float, tally: Tally) -> None:
    """Unary calls back to back on one channel until the deadline."""
    async with aio.insecure_channel(target) as channel:
        infer: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(INFER)
        i = 0
        while (start := time.perf_counter()) < deadline:
            try:
                await infer(bodies[i % len(bodies)], timeout=10.0)
                tally.latencies.append(time.perf_counter() - start)
            except aio.AioRpcError:
                tally.errors += 1
            i += 1


async def load(
    target: str, bodies: list[bytes], channels: int, duration: float
) -> dict[str, float]:
    """Run `channels` workers for `duration` seconds."""
    tally = Tally()
    began = time.perf_counter()
    deadline = began + duration
    await asyncio.gather(*(worker(target, bodies, deadline, tally) for _ in range(channels)))
    seconds = time.perf_counter() - began
    return {
        "requests": len(tally.latencies), "seconds": seconds, "errors": tally.errors,
        "p50_ms": tally.percentile(50), "p99_ms": tally.percentile(99),
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m bench.grpc_load HOST:PORT --connections N --duration S --rows R`."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("target")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--model", default="adult", help="model_name of the requests")
    args = p.parse_args(argv)
    loop = new_loop()
    try:
        summary = loop.run_until_complete(
            load(args.target, requests(args.rows, args.model), args.connections, args.duration)
        )
    finally:
        loop.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
