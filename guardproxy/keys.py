"""The decision key: the operator's, else one generated once and shared through the state."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from guardproxy.guards.draws import Draws, derive_key
from guardproxy.state.base import StateBackend, StateError
from guardproxy.tasks import cancel_and_wait

log = logging.getLogger("guardproxy.keys")

SECRET_NAME = "decision_key"


class DecisionKey:
    """Puts the right key into the draws at start; retries sharing while the state is down.

    Until the state backend answers, this replica draws with a key of its own: its decisions
    are still unpredictable to clients, but may differ from other replicas' (see /status).
    """

    def __init__(
        self,
        draws: Draws,
        state: StateBackend,
        secret: str | None,
        retry: float = 5.0,
        source: str = "environment",
    ) -> None:
        self.draws, self.state, self.secret, self.retry = draws, state, secret, retry
        self.source = source  # where a given secret came from
        self.errors = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Use the operator's key, or the shared one (retrying in the background on failure)."""
        if self.secret is not None:
            self.draws.use(derive_key(self.secret), self.source)
            return
        self.draws.source = "generated (not shared yet)"
        if not await self._share():
            self._task = asyncio.create_task(self._retry(), name="guardproxy-decision-key")

    async def stop(self) -> None:
        """Stop retrying."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _share(self) -> bool:
        try:
            value = await self.state.shared_secret(SECRET_NAME, secrets.token_hex(32))
        except StateError as exc:
            self.errors += 1
            if self.last_error is None:
                log.warning("decision key not shared yet, using this replica's own: %s", exc)
            self.last_error = str(exc)
            return False
        self.draws.use(derive_key(value), f"shared through the {self.state.name} state")
        self.last_error = None
        return True

    async def _retry(self) -> None:
        while True:
            await asyncio.sleep(self.retry)
            if await self._share():
                log.info("decision key now shared through the %s state", self.state.name)
                return

    def status(self) -> dict[str, Any]:
        """Where the key came from (never the key), and sharing failures."""
        return {"source": self.draws.source, "errors": self.errors, "last_error": self.last_error}
