"""The HTTP/1.1 server of the data port: listen, sweep deadlines, drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

from .config import ServerConfig
from .connection import ServerConnection
from .counters import ServerCounters
from .headers import HeaderPairs
from .request import Request
from .shared import ErrorBuilder, Handler, Shared

BACKLOG = 1024  # connections the kernel queues before accept


def json_error(status: int, message: str, request: Request | None) -> tuple[HeaderPairs, bytes]:
    """The default error answer: `{"error": ..., "request_id": ...}` with a fresh id."""
    request_id = os.urandom(16).hex()
    body = json.dumps({"error": message, "request_id": request_id}).encode()
    return [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())], body


class Server:
    """Serves `handler(request, response)` for every request on one listening socket."""

    def __init__(
        self,
        handler: Handler,
        config: ServerConfig | None = None,
        errors: ErrorBuilder = json_error,
    ) -> None:
        self.config = config or ServerConfig()
        self.counters = ServerCounters()
        self._shared = Shared(handler, errors, self.config, self.counters)
        self._server: asyncio.Server | None = None
        self._sweep: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen on host:port (0 picks a free port); returns the bound port."""
        loop = asyncio.get_running_loop()
        shared = self._shared
        self._server = await loop.create_server(
            lambda: ServerConnection(shared),
            host,
            port,
            reuse_port=reuse_port or None,
            backlog=BACKLOG,
        )
        self._sweep = loop.call_later(self.config.tick, self._check)
        return int(self._server.sockets[0].getsockname()[1])

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in list(self._shared.connections):
            connection.check(now)
        self._sweep = loop.call_later(self.config.tick, self._check)

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._shared.connections)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; close idle connections; give requests in flight `grace` seconds."""
        shared = self._shared
        shared.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(shared.connections):
            connection.shutdown()
        if shared.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shared.gone.wait(), grace)
        for connection in list(shared.connections):
            connection.abort()
        for task in list(shared.tasks):
            task.cancel()
        if shared.tasks:
            await asyncio.wait(list(shared.tasks), timeout=1.0)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def status(self) -> dict[str, Any]:
        """Counters for /status."""
        return {**self.counters.as_dict(), "clients": len(self._shared.clients)}
