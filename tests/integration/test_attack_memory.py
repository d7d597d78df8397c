"""A flood of long request ids on large batches cannot grow a real proxy's memory.

Prediction records were once keyed `<request id>:<row>`: ids of several KB on batches of
50 rows took a proxy from 70 MB to 1.7 GB. Ids are now at most 128 characters (longer ones
are replaced) and records are kept under a fixed-size key, so the flood below stays well
inside the 256 MiB the Kubernetes component gives the sidecar.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import build_model_app, v2_request
from guardproxy.testing import serving
from tests.children import drain, guardproxy_ports

pytestmark = pytest.mark.slow
LIMIT_MIB = 256
ROWS = list(adult_rows())[:50]


def peak_rss_mib(pid: int) -> float:
    """The process's high-water resident memory (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
async def guarded_process() -> AsyncIterator[tuple[str, int]]:
    """`guardproxy serve` (embedded default policy) before the demo model; (url, pid)."""
    async with serving(build_model_app()) as model_url:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guardproxy.cli", "serve", "--upstream", model_url,
            "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-level", "INFO",
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert process.stderr is not None
        log: list[bytes] = []
        port, _ = await guardproxy_ports(process.stderr, log)
        reader = asyncio.create_task(drain(process.stderr, log))
        yield f"http://127.0.0.1:{port}", process.pid
        process.terminate()
        await process.wait()
        await reader


async def test_long_ids_on_large_batches_keep_memory_bounded(
    guarded_process: tuple[str, int],
) -> None:
    url, pid = guarded_process
    body = v2_request(ROWS)
    sent = replaced = 0
    async with aiohttp.ClientSession() as session:

        async def flood(worker: int) -> None:
            nonlocal sent, replaced
            for i in range(250):
                request_id = f"{worker}-{i}-" + "x" * 4096  # each 4 KB, and unique
                headers = {"X-Request-Id": request_id}
                async with session.post(
                    f"{url}/v2/models/adult/infer", json=body, headers=headers
                ) as r:
                    assert r.status == 200
                    replaced += r.headers["X-Request-Id"] != request_id
                    sent += 1

        await asyncio.gather(*(flood(w) for w in range(8)))
    assert sent == replaced == 2000  # 100,000 rows recorded under generated ids
    print(f"peak RSS after 2,000 requests of 50 rows with 4 KB ids: {peak_rss_mib(pid):.0f} MiB")
    assert peak_rss_mib(pid) < LIMIT_MIB
