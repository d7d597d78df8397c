"""Micro-benchmark: the guard chain's cost per request for a KServe v2 single-row payload."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from guardproxy.guards.base import GuardChain
from guardproxy.guards.chain import GuardContext, build_chain
from guardproxy.guards.exchange import Exchange, dumps
from guardproxy.payloads.binary import BinaryBody, encode
from guardproxy.payloads.binary_bodies import BinaryBodies
from guardproxy.policy.models import ModelPolicy
from guardproxy.sampling.sinks import SampleQueue
from guardproxy.transport import Headers

REQUEST_DOC = {
    "inputs": [
        {"name": "age", "shape": [1], "datatype": "INT64", "data": [39]},
        {"name": "sex", "shape": [1], "datatype": "BYTES", "data": ["female"]},
        {"name": "hours", "shape": [1], "datatype": "FP32", "data": [40.0]},
    ]
}
RESPONSE_DOC = {
    "model_name": "adult",
    "outputs": [
        {"name": "predict", "shape": [1], "datatype": "INT64", "data": [1]},
        {"name": "score", "shape": [1], "datatype": "FP32", "data": [0.625]},
    ],
}
REQUEST, RESPONSE = dumps(REQUEST_DOC), dumps(RESPONSE_DOC)
# The same in the binary tensor extension, every tensor binary.
BINARY_REQUEST = encode(BinaryBody(REQUEST_DOC, "inputs"))
BINARY_RESPONSE = encode(BinaryBody(RESPONSE_DOC, "outputs"))
SECTIONS = {
    "protocol": "kserve_v2",
    "score": {"output": "score"},
    "groups": {"attribute": {"input": "sex"}, "values": ["female", "male"]},
    "decision": {"threshold": 0.5, "per_group": {"female": 0.45}},
    "sampling": {"rate": 0.01, "min_per_group": 50},
}
HEADERS = Headers([(b"Content-Type", b"application/json")])


def exchange(i: int) -> Exchange:
    """A fresh exchange whose upstream has answered."""
    ex = Exchange(
        f"req-{i}", "sg", "adult", "POST", "/v2/models/adult/infer", HEADERS, REQUEST, 0.0
    )
    ex.status = 200
    ex.response_headers = [(b"Content-Type", b"application/json")]
    ex.response_type = b"application/json"
    ex.response_body = RESPONSE
    return ex


def binary_exchange(chain: GuardChain) -> Callable[[int], Exchange]:
    """Fresh exchanges whose bodies both ways are binary tensors."""
    reads = chain.binary
    assert reads is not None

    def build(i: int) -> Exchange:
        ex = exchange(i)
        ex.body, ex.response_body = BINARY_REQUEST.body, BINARY_RESPONSE.body
        ex.binary = BinaryBodies(reads, str(BINARY_REQUEST.header_length))
        ex.binary.response = str(BINARY_RESPONSE.header_length)
        return ex

    return build


async def measure(chain: GuardChain, n: int, build: Callable[[int], Exchange]) -> float:
    """Seconds per request over n fresh exchanges, exchange construction included."""
    started = time.perf_counter()
    for i in range(n):
        ex = build(i)
        await chain.on_request(ex)
        await chain.on_response(ex)
    return (time.perf_counter() - started) / n


async def best_of(
    chain: GuardChain, n: int, build: Callable[[int], Exchange] = exchange, runs: int = 7
) -> float:
    """The fastest of several runs: the least disturbed by other work on the machine."""
    await measure(chain, 2000, build)  # warm up
    return min([await measure(chain, n, build) for _ in range(runs)])


async def main(n: int) -> None:
    """Print µs per request that each chain adds over building the exchange alone."""
    model = ModelPolicy.model_validate({"name": "adult", **SECTIONS})
    queue = SampleQueue(n * 10)
    chains = {
        "groups+decision": build_chain("sg", model, "bench", GuardContext()),
        "+sampling": build_chain("sg", model, "bench", GuardContext(samples=queue)),
    }
    baseline = await best_of(GuardChain([]), n)
    print(f"{'exchange only':18s} {baseline * 1e6:7.2f} µs/request (subtracted below)")
    for label, chain in chains.items():
        added = await best_of(chain, n) - baseline
        print(f"{label:18s} {added * 1e6:7.2f} µs/request added (parsing both bodies included)")
    chain = chains["+sampling"]
    added = await best_of(chain, n, binary_exchange(chain)) - baseline
    print(f"{'binary tensors':18s} {added * 1e6:7.2f} µs/request added (+sampling, both ways)")
    print(f"sampled {queue.offered}, dropped {queue.dropped}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().n))
