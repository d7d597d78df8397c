"""Child processes that bind port 0: where they ended up listening."""

from __future__ import annotations

import asyncio
import re

import psutil

from guardproxy.testing import eventually

READY = re.compile(rb"serving on [\d.]+:(\d+) \(admin [\d.]+:(\d+)\)")


def listening_ports(pid: int) -> list[int]:
    """The TCP ports a process listens on."""
    connections = psutil.Process(pid).net_connections(kind="tcp")
    return sorted({c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN})


async def guardproxy_ports(
    stream: asyncio.StreamReader, log: list[bytes], within: float = 30.0
) -> tuple[int, int]:
    """The (data, admin) ports a `guardproxy serve` child reports when it is ready.

    Reads the child's log until the "serving on" line; the caller keeps draining `stream`.
    """

    async def next_ready() -> tuple[int, int]:
        while line := await stream.readline():
            log.append(line)
            found = READY.search(line)
            if found:
                return int(found.group(1)), int(found.group(2))
        raise AssertionError(b"".join(log).decode(errors="replace") or "the child exited")

    return await asyncio.wait_for(next_ready(), within)


async def drain(stream: asyncio.StreamReader, log: list[bytes]) -> None:
    """Keep reading a child's output so that its pipe never fills."""
    while line := await stream.readline():
        log.append(line)


async def listening_port(pid: int, within: float = 30.0) -> int:
    """The one TCP port a child listens on, once it does."""
    await eventually(lambda: len(listening_ports(pid)) == 1, within=within)
    (port,) = listening_ports(pid)
    return port
