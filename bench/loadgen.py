"""A Python load generator for machines without wrk: aiohttp client, fixed concurrency, JSON out."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .upstream import new_loop


@dataclass
class Tally:
    """Latencies (seconds) of completed requests and the count of failed ones."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def percentile(self, q: float) -> float:
        """The q-th percentile latency in milliseconds (nearest rank)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        rank = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[rank] * 1e3


Request = tuple[bytes, dict[str, str]]  # a body and its headers


async def worker(
    session: aiohttp.ClientSession, url: str, bodies: list[Request], deadline: float, tally: Tally
) -> None:
    """Send requests back to back on one connection until the deadline."""
    i = 0
    while (start := time.perf_counter()) < deadline:
        body, headers = bodies[i % len(bodies)]
        try:
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                ok = r.status < 400
        except aiohttp.ClientError:
            ok = False
        if ok:
            tally.latencies.append(time.perf_counter() - start)
        else:
            tally.errors += 1
        i += 1


async def load(
    url: str, bodies: list[Request], connections: int, duration: float
) -> dict[str, float]:
    """Run `connections` workers for `duration` seconds; the summary wrk's script also prints."""
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        began = time.perf_counter()
        deadline = began + duration
        await asyncio.gather(
            *(worker(session, url, bodies, deadline, tally) for _ in range(connections))
        )
        seconds = time.perf_counter() - began
    return {
        "requests": len(tally.latencies), "seconds": seconds, "errors": tally.errors,
        "p50_ms": tally.percentile(50), "p99_ms": tally.percentile(99),
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m bench.loadgen URL --connections N --duration S --bodies FILE`."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--bodies", type=Path, required=True,
                   help='one request per line: {"body": HEX, "headers": {...}}')  # fmt: skip
    args = p.parse_args(argv)
    lines = [json.loads(line) for line in args.bodies.read_text().splitlines() if line.strip()]
    bodies = [(bytes.fromhex(doc["body"]), doc["headers"]) for doc in lines]
    loop = new_loop()
    try:
        summary = loop.run_until_complete(load(args.url, bodies, args.connections, args.duration))
    finally:
        loop.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
