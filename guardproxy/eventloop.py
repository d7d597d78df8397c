"""The event loop every command runs on: uvloop when it is installed."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run_async(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a coroutine to completion on a fresh loop (uvloop when installed)."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is optional
        runner = asyncio.Runner()
    with runner:
        runner.run(coro)
