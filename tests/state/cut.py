"""A relay to a real Redis whose connection fails once, at a chosen command.

The failure comes in the two forms a timeout cannot tell apart: the command never reaches
Redis (`lost`), or Redis runs it and its answer never comes back (`unanswered`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass
class Cut:
    """Where the next failure falls: the first write naming `command`, in the way `how` says."""

    command: bytes = b""
    how: str = ""  # "lost" or "unanswered"
    fired: bool = False

    def arm(self, command: str, how: str) -> None:
        """Fail at the next write that names this command."""
        assert how in ("lost", "unanswered")
        self.command, self.how, self.fired = command.encode(), how, False

    def disarm(self) -> None:
        """No failure from now on."""
        self.command = b""

    def matches(self, chunk: bytes) -> bool:
        """Whether this chunk is where the failure falls (once)."""
        hit = bool(self.command) and not self.fired
        hit = hit and f"${len(self.command)}\r\n".encode() + self.command + b"\r\n" in chunk
        self.fired = self.fired or hit
        return hit


class CutRelay:
    """Forwards each connection to Redis until the cut fires on it; then it goes silent."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.cut = Cut()
        self.port = 0
        self.sent: list[bytes] = []  # what the clients wrote, as it passed

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection(*self.target)
        silent = asyncio.Event()  # set once the cut fires: nothing more is passed either way

        async def up() -> None:
            while chunk := await client_r.read(65536):
                self.sent.append(chunk)
                if self.cut.matches(chunk):
                    silent.set()
                    if self.cut.how == "unanswered":  # Redis runs it; its answer is kept back
                        redis_w.write(chunk)
                elif not silent.is_set():
                    redis_w.write(chunk)
                await redis_w.drain()
            redis_w.close()  # the client gave up: so does Redis's side

        async def down() -> None:
            while chunk := await redis_r.read(65536):
                if not silent.is_set():
                    client_w.write(chunk)
                    await client_w.drain()
            client_w.close()

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(up(), down())

    @asynccontextmanager
    async def running(self) -> AsyncIterator[CutRelay]:
        """Listen on a free loopback port for as long as the block runs."""
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()
