"""`guardproxy demo`: the bundled Adult model behind the proxy, real traffic, a report."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from ..app import RunningProxy, running_proxy
from ..settings import Settings
from ..testing import serving
from .model import adult_rows
from .server import build_model_app, v2_request

INFER = "/v2/models/adult/infer"


@dataclass
class Tally:
    """What the demo saw come back."""

    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    decisions: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    labels: dict[str, str] = field(default_factory=dict)
    policy: str = ""


async def replay(
    session: aiohttp.ClientSession, url: str, rows: list[dict[str, str]], tally: Tally
) -> None:
    """Send each row as its own inference request, a few at a time."""
    gate = asyncio.Semaphore(16)

    async def one(index: int, row: dict[str, str]) -> None:
        request_id = f"demo-{index:05d}"
        async with gate:
            began = time.perf_counter()
            headers = {"X-Request-Id": request_id}
            async with session.post(url + INFER, json=v2_request([row]), headers=headers) as r:
                await r.read()
            tally.latencies_ms.append((time.perf_counter() - began) * 1000)
        tally.statuses[r.status] += 1
        tally.decisions[row["sex"]][r.headers.get("X-Guard-Decision", "-")] += 1
        tally.labels[request_id] = row["income"]
        tally.policy = r.headers.get("X-Guard-Policy", "-")

    await asyncio.gather(*(one(i, row) for i, row in enumerate(rows)))


def report(tally: Tally, proxy: RunningProxy) -> str:
    """The demo's printed summary."""
    lines = [
        f"requests: {sum(tally.statuses.values())}  statuses: {dict(tally.statuses)}",
        f"latency through the proxy: p50 {statistics.median(tally.latencies_ms):.2f} ms",
        f"policy version: {tally.policy}",
        "decisions by group (X-Guard-Decision):",
    ]
    for group, counts in sorted(tally.decisions.items()):
        total = sum(counts.values())
        positive = counts.get("1", 0)
        lines.append(
            f"  {group:<8} n={total:<5} positive={positive:<5} rate={positive / total:.3f}"
        )
    lines.append(f"proxy counters: {proxy.runtime.proxy.counts.as_dict()}")
    return "\n".join(lines)


async def story(requests: int) -> int:
    """Start the model and the proxy, replay Adult rows, print what passed."""
    rows = list(adult_rows())[:requests]
    with tempfile.TemporaryDirectory(prefix="guardproxy-demo-") as scratch:
        async with serving(build_model_app()) as model_url:
            settings = Settings(
                upstream=model_url,
                listen=("127.0.0.1", 0),
                admin=("127.0.0.1", 0),
                samples_dir=Path(scratch) / "samples",
            )
            async with running_proxy(settings) as proxy, aiohttp.ClientSession() as session:
                print(f"model server {model_url}, guardproxy {proxy.url} (admin {proxy.admin_url})")
                tally = Tally()
                await replay(session, proxy.url, rows, tally)
                print(report(tally, proxy))
                ok = tally.statuses.get(200, 0) == len(rows)
    print("demo finished" if ok else "demo finished with errors")
    return 0 if ok else 1


def run(requests: int = 400) -> int:
    """Run the demo story on a fresh event loop."""
    from ..cli import run_async

    result: list[int] = []

    async def main() -> None:
        result.append(await story(requests))

    run_async(main())
    return result[0]
