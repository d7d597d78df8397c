"""One client holding every connection of a real `guardproxy serve` shuts others out unless
`--max-connections-per-client` gives each address its share."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import pytest

from guardproxy.testing import eventually
from tests.children import drain, guardproxy_ports

MAX_CONNECTIONS = 6
Serve = Callable[[str], AbstractAsyncContextManager[tuple[int, str]]]


@pytest.fixture
def serve(upstream_url: str) -> Serve:
    """Start `guardproxy serve` with a per-client limit given by its variable: (port, admin)."""

    @asynccontextmanager
    async def started(per_client: str) -> AsyncIterator[tuple[int, str]]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["GUARDPROXY_MAX_CONNECTIONS_PER_CLIENT"] = per_client
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "guardproxy.cli", "serve", "--upstream", upstream_url,
            "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            "--max-connections", str(MAX_CONNECTIONS), stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        assert process.stderr is not None
        log: list[bytes] = []
        port, admin = await guardproxy_ports(process.stderr, log)
        reader = asyncio.create_task(drain(process.stderr, log))
        try:
            yield port, f"http://127.0.0.1:{admin}"
        finally:
            process.kill()
            await process.wait()
            await reader

    return started


async def ask_from(source: str, port: int) -> bytes:
    """What the proxy answers a GET sent from `source`: b"" when it closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(b"GET /echo HTTP/1.1\r\nHost: model\r\n\r\n")
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (asyncio.IncompleteReadError, ConnectionError):
        return b""
    finally:
        writer.close()


async def data_port(admin_url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(f"{admin_url}/status") as r:
        return (await r.json())["data_port"]


@pytest.mark.parametrize(("per_client", "attacker_holds"), [("0", MAX_CONNECTIONS), ("4", 4)])
async def test_another_client_is_served_only_when_one_client_has_a_share(
    serve: Serve, per_client: str, attacker_holds: int
) -> None:
    async with serve(per_client) as (port, admin_url):
        # One client opens every connection the proxy allows and sends nothing on them.
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]

        async def all_accepted_or_refused() -> bool:
            status = await data_port(admin_url)
            return bool(status["connections"] + sum(status["errors"].values()) == MAX_CONNECTIONS)

        await eventually(all_accepted_or_refused)
        assert (await data_port(admin_url))["open"] == attacker_holds
        answer = await ask_from("127.0.0.2", port)
        status = await data_port(admin_url)
        if per_client == "0":
            assert answer == b""  # closed as it was accepted: the attacker holds them all
            assert status["errors"] == {"connection_limit": 1}
        else:
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert status["errors"] == {"client_connection_limit": MAX_CONNECTIONS - 4}
        for _, writer in held:
            writer.close()
