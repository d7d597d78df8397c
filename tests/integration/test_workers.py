"""`guardproxy serve --workers 2`: two processes on one data port; SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import psutil
import pytest

READY = re.compile(rb"serving on [\d.]+:(\d+) \(admin [\d.]+:(\d+)\).*\[worker (\d+) of (\d+)\]")


@dataclass
class Workers:
    """The supervisor process and what each worker said when it was ready."""

    process: asyncio.subprocess.Process
    ports: dict[int, tuple[int, int]] = field(default_factory=dict)  # worker -> (data, admin)
    log: list[bytes] = field(default_factory=list)


async def follow(stream: asyncio.StreamReader, workers: Workers, count: int) -> None:
    """Read the log to its end, noting each worker's ports as it reports them."""
    while line := await stream.readline():
        workers.log.append(line)
        found = READY.search(line)
        if found:
            data, admin, index, of = map(int, found.groups())
            assert of == count
            workers.ports[index] = (data, admin)


@pytest.fixture
async def two_workers(upstream_url: str) -> AsyncIterator[Workers]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardproxy.cli", "serve", "--upstream", upstream_url,
        "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--workers", "2",
        "--log-level", "INFO", "--drain-timeout", "5",
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stderr is not None
    workers = Workers(process)
    reader = asyncio.create_task(follow(process.stderr, workers, 2))
    for _ in range(300):
        if len(workers.ports) == 2 or process.returncode is not None:
            break
        await asyncio.sleep(0.05)
    assert len(workers.ports) == 2, b"".join(workers.log).decode(errors="replace")
    yield workers
    if process.returncode is None:
        process.kill()
        await process.wait()
    await reader


async def test_both_workers_answer_and_sigterm_stops_all(two_workers: Workers) -> None:
    (port,) = {data for data, _ in two_workers.ports.values()}  # one data port for both
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection per request
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(40):
            async with session.get(f"http://127.0.0.1:{port}/echo/{i}") as response:
                assert response.status == 200
        statuses = []
        for _, admin in sorted(two_workers.ports.values(), key=lambda p: p[1]):
            async with session.get(f"http://127.0.0.1:{admin}/status") as response:
                statuses.append(await response.json())
    served = [s["requests"]["requests"] for s in statuses]
    assert sum(served) == 40 and all(n > 0 for n in served), served
    assert sorted(s["worker"]["index"] for s in statuses) == [0, 1]
    pids = {s["worker"]["pid"] for s in statuses}
    supervisor = psutil.Process(two_workers.process.pid)
    assert pids == {child.pid for child in supervisor.children()}
    two_workers.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(two_workers.process.wait(), 20) == 0
    assert not any(psutil.pid_exists(pid) for pid in pids)


async def test_a_worker_that_dies_stops_the_others(two_workers: Workers) -> None:
    supervisor = psutil.Process(two_workers.process.pid)
    first, second = supervisor.children()
    first.kill()
    assert await asyncio.wait_for(two_workers.process.wait(), 20) == 1
    assert not second.is_running() or second.status() == psutil.STATUS_ZOMBIE
    assert any(b"exited with -9" in line for line in two_workers.log)
