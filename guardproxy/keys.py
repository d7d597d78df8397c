"""The decision key: the operator's, else one generated once and shared through the state."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from guardproxy.guards.draws import Draws, derive_key
from guardproxy.state.base import StateBackend, StateError
from guardproxy.tasks import cancel_and_wait, raise_if_cancelled

log = logging.getLogger("guardproxy.keys")

SECRET_NAME = "decision_key"


class DecisionKey:
    """Puts the right key into the draws at start, then keeps it the one the state holds.

    Until the state backend answers, this replica draws with a key of its own: its decisions
    are still unpredictable to clients, but may differ from other replicas' (see /status).
    Every `retry` seconds it offers its key again (SET NX): if the backend lost the key (Redis
    restarted empty), the first replica to offer stores its own, and every replica adopts the
    stored one, so a replica started since does not keep drawing with another key.
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
        self.errors = self.changes = 0
        self.last_error: str | None = None
        self._shared: str | None = None  # the stored key this replica draws with
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Use the operator's key, or the shared one (retrying in the background on failure)."""
        if self.secret is not None:
            self.draws.use(derive_key(self.secret), self.source)
            return
        self.draws.source = "generated (not shared yet)"
        await self._share()
        self._task = asyncio.create_task(self._keep_shared(), name="guardproxy-decision-key")

    async def stop(self) -> None:
        """Stop retrying."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _share(self) -> None:
        candidate = self._shared or secrets.token_hex(32)
        try:
            value = await self.state.shared_secret(SECRET_NAME, candidate)
        except StateError as exc:
            self.errors += 1
            if self.last_error is None:
                log.warning("decision key not shared, this replica draws with its own: %s", exc)
            self.last_error = str(exc)
            return
        self.last_error = None
        if value == self._shared:
            return
        if self._shared is not None:  # another replica stored its key after the backend lost it
            self.changes += 1
            log.warning(
                "the decision key stored in the %s state changed; using it", self.state.name
            )
        self._shared = value
        self.draws.use(derive_key(value), f"shared through the {self.state.name} state")

    async def _keep_shared(self) -> None:
        while True:
            await asyncio.sleep(self.retry)
            await self._share()
            raise_if_cancelled()

    def status(self) -> dict[str, Any]:
        """Where the key came from (never the key), changes of the shared one, failures."""
        return {
            "source": self.draws.source,
            "changes": self.changes,
            "errors": self.errors,
            "last_error": self.last_error,
        }
