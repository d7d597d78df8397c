"""`guardproxy serve` as a real process: bounded memory on huge bodies, SIGTERM drain."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from guardproxy.testing import PATTERN, eventually
from tests.children import drain, guardproxy_ports

BODY_BYTES = 200 * 1024 * 1024


@dataclass
class ProxyProcess:
    """A `guardproxy serve` child process."""

    process: asyncio.subprocess.Process
    url: str
    admin_url: str

    def peak_rss_mb(self) -> float:
        """The process's high-water resident memory (VmHWM), in MiB."""
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")


@pytest.fixture
async def proxy_process(upstream_url: str) -> AsyncIterator[ProxyProcess]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardproxy.cli", "serve", "--upstream", upstream_url,
        "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--drain-timeout", "10",
        "--log-level", "INFO",
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stderr is not None
    log: list[bytes] = []
    port, admin = await guardproxy_ports(process.stderr, log)
    reader = asyncio.create_task(drain(process.stderr, log))
    yield ProxyProcess(process, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}")
    if process.returncode is None:
        process.kill()
        await process.wait()
    await reader


async def stream_body(total: int) -> AsyncIterator[bytes]:
    """`total` bytes of the pattern, produced lazily."""
    sent = 0
    while sent < total:
        chunk = PATTERN[: min(len(PATTERN), total - sent)]
        sent += len(chunk)
        yield chunk


async def test_200mb_upload_and_download_with_bounded_memory(
    proxy_process: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    expected = hashlib.sha256()
    async for chunk in stream_body(BODY_BYTES):
        expected.update(chunk)
    async with client.post(f"{proxy_process.url}/upload", data=stream_body(BODY_BYTES)) as response:
        assert await response.json() == {"size": BODY_BYTES, "sha256": expected.hexdigest()}
    digest, size = hashlib.sha256(), 0
    async with client.get(f"{proxy_process.url}/bytes/{BODY_BYTES}") as response:
        async for chunk in response.content.iter_chunked(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    assert (size, digest.hexdigest()) == (BODY_BYTES, expected.hexdigest())
    assert proxy_process.peak_rss_mb() < 150, "the proxy buffered the body"


async def test_sigterm_drains_in_flight_requests_and_exits_zero(
    proxy_process: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    async def slow_call() -> int:
        async with client.get(f"{proxy_process.url}/slow/1") as response:
            await response.read()
            return response.status

    in_flight = [asyncio.create_task(slow_call()) for _ in range(20)]

    async def all_in_flight() -> bool:
        async with client.get(f"{proxy_process.admin_url}/status") as response:
            return bool((await response.json())["requests"]["in_flight"] == 20)

    await eventually(all_in_flight)
    proxy_process.process.send_signal(signal.SIGTERM)
    statuses = await asyncio.gather(*in_flight)
    assert statuses == [200] * 20
    assert await asyncio.wait_for(proxy_process.process.wait(), 10) == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.get(f"{proxy_process.url}/echo") as response:
            await response.read()
