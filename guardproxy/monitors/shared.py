"""The learned threshold table every replica serves: the one stored in the state backend."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from guardproxy.monitors.tables import history_entry
from guardproxy.policy.thresholds import ModelKey, Snapshot, ThresholdTable
from guardproxy.state.base import StateBackend, StateError

log = logging.getLogger("guardproxy.monitors")


class SharedTable:
    """Keeps the published table the stored one, re-read each tick; saves by compare-and-set.

    A replica saves a new table only against the version it last read: one that calibrated
    from an older table adopts the stored one instead of overwriting it. If the backend lost
    the table (Redis restarted empty), a replica that serves one stores it again, so a
    replica started since adopts it rather than serving the policy's static thresholds.
    """

    def __init__(
        self,
        state: StateBackend,
        snapshot: Snapshot[ThresholdTable],
        history: deque[dict[str, Any]],
        clock: Callable[[], float],
    ) -> None:
        self.state, self.snapshot, self.history, self.clock = state, snapshot, history, clock
        self.stored: str | None = None  # the version last read from (or written to) the backend
        self.synced_at: float | None = None
        self.adopted = self.stored_again = self.refused = self.errors = 0
        self.last_error: str | None = None
        # told which models an adopted table changed: another replica calibrated them
        self.on_adopt: Callable[[set[ModelKey]], None] = lambda keys: None

    async def sync(self, reason: str = "adopted") -> None:
        """Serve the stored table; store ours again when the backend has none."""
        try:
            stored = await self.state.load_thresholds()
        except StateError as exc:
            self._failed(exc)
            return
        self._answered()
        if stored is not None:
            self._adopt(stored, reason)
        elif self.snapshot.current.rules:
            await self._store_again(self.snapshot.current)
        else:
            self.stored = None

    async def save(self, table: ThresholdTable, model: str, why: str) -> str:
        """Store a new table against the version last read: published, refused or failed."""
        try:
            saved = await self.state.save_thresholds(table, self.stored)
        except StateError as exc:
            self._failed(exc)  # not published: no replica could adopt it
            return "failed"
        self._answered()
        if not saved.ok:
            self.refused += 1
            self._adopt_or_forget(saved.stored)
            return "refused"
        self.stored = table.version
        self.snapshot.publish(table)
        self.history.append(history_entry(table, model, why, self.clock()))
        return "published"

    async def _store_again(self, table: ThresholdTable) -> None:
        try:
            saved = await self.state.save_thresholds(table, None)
        except StateError as exc:
            self._failed(exc)
            return
        if saved.ok:
            self.stored_again += 1
            self.stored = table.version
            log.warning("the state backend lost the thresholds; stored %s again", table.version)
        else:  # another replica stored its table first
            self._adopt_or_forget(saved.stored)

    def _adopt_or_forget(self, stored: ThresholdTable | None) -> None:
        if stored is None:
            self.stored = None  # lost since it was read: the next sync stores ours again
        else:
            self._adopt(stored, "adopted")

    def _adopt(self, stored: ThresholdTable, reason: str) -> None:
        self.stored = stored.version
        if stored.version == self.snapshot.current.version:
            return
        changed = self.snapshot.current.rules.items() ^ stored.rules.items()
        self.snapshot.publish(stored)
        self.adopted += reason == "adopted"
        self.history.append(history_entry(stored, "*", reason, self.clock()))
        self.on_adopt({rule[0][:3] for rule in changed})

    def _answered(self) -> None:
        self.synced_at = self.clock()
        self.last_error = None

    def _failed(self, exc: StateError) -> None:
        if self.last_error is None:
            log.warning("threshold table not read nor stored: %s", exc)
        self.errors += 1
        self.last_error = str(exc)

    def status(self) -> dict[str, Any]:
        """The table served against the one stored, and what syncing them did."""
        version = self.snapshot.current.version
        same = version == self.stored or (self.stored is None and version == "static")
        return {
            "version": version,
            "stored_version": self.stored,
            "in_sync": self.synced_at is not None and same,  # never read: unknown, so not
            "synced_at": self.synced_at,
            "adopted": self.adopted,
            "stored_again": self.stored_again,
            "refused": self.refused,
            "errors": self.errors,
            "last_error": self.last_error,
            "history": list(self.history),
        }
