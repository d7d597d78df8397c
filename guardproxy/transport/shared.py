"""What the connections of one server share: the handler, the error builder, limits, counters."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import ServerConfig
from .counters import ServerCounters
from .headers import HeaderPairs
from .request import Request
from .response import ResponseWriter

if TYPE_CHECKING:
    from .connection import ServerConnection

Handler = Callable[[Request, ResponseWriter], Awaitable[None]]
# (status, message, request if one was parsed) -> (headers, body) of an error the server gives.
ErrorBuilder = Callable[[int, str, "Request | None"], tuple[HeaderPairs, bytes]]


@dataclass(slots=True)
class Shared:
    """What every connection of one server shares."""

    handler: Handler
    errors: ErrorBuilder
    config: ServerConfig
    counters: ServerCounters
    connections: set[ServerConnection] = field(default_factory=set)
    clients: dict[str, int] = field(default_factory=dict)  # open connections by client address
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    draining: bool = False
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # set when the last one closed
