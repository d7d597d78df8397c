"""/metrics renders in a worker thread, one render at a time, shared by concurrent scrapers.

Rendering costs ~1 ms of CPU per model with traffic (the SDK's collection and the text
encoder): on the loop, a 300-model scrape held every request of every model ~250-390 ms.
In a thread it only takes turns with the loop (the switch interval is 1 ms). What the
collection reads is safe there: the aggregates are copied in one C call each
(`list(d.items())`), and the gauges read a `Readings` the loop built before the render.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from prometheus_client.exposition import choose_encoder

Exposition = tuple[bytes, str]  # the body and its content type


class SharedRender:
    """Runs `prepare` on the loop then `render` in a thread; scrapers asking meanwhile share it."""

    def __init__(
        self, prepare: Callable[[], Awaitable[None]], render: Callable[[str], Exposition]
    ) -> None:
        self.prepare, self.render = prepare, render
        self.renders = 0  # renders started (shared ones count once)
        self._lock = asyncio.Lock()  # one render thread at a time, whatever the format
        self._pending: dict[str, asyncio.Future[Exposition]] = {}  # content type -> render

    async def __call__(self, accept: str) -> Exposition:
        """The exposition in the format `accept` prefers: a render under way, or a new one."""
        _, content_type = choose_encoder(accept)
        pending = self._pending.get(content_type)
        if pending is None:
            pending = asyncio.ensure_future(self._run(accept))
            self._pending[content_type] = pending
            pending.add_done_callback(lambda done: self._finished(content_type, done))
        # Shielded: a scraper that goes away does not cancel the render others wait for.
        return await asyncio.shield(pending)

    async def idle(self) -> None:
        """Wait until no render is under way (before the meters shut down)."""
        async with self._lock:
            pass

    async def _run(self, accept: str) -> Exposition:
        async with self._lock:
            self.renders += 1
            await self.prepare()
            return await asyncio.to_thread(self.render, accept)

    def _finished(self, content_type: str, done: asyncio.Future[Exposition]) -> None:
        if self._pending.get(content_type) is done:
            del self._pending[content_type]
        if not done.cancelled():
            done.exception()  # retrieved: every scraper may have gone before it ended
