"""The current policy table, reloaded whole when the policy directory changes."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from guardproxy.policy.loader import PolicyError, PolicyFiles, load_files, read_policy_files
from guardproxy.policy.table import ChainFactory, PolicyTable, builtin_files, compile_table
from guardproxy.policy.thresholds import Snapshot
from guardproxy.tasks import cancel_and_wait

log = logging.getLogger("guardproxy.policy")

SwapCallback = Callable[[PolicyTable], None]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: swapped in a new table, found nothing new, or kept the old one."""

    status: Literal["ok", "unchanged", "failed"]
    problems: tuple[str, ...] = ()


class PolicyStore:
    """Holds the serving PolicyTable in a Snapshot and swaps in new ones that compile."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        default_region: str = "default",
        build_chain: ChainFactory | None = None,
        on_swap: Iterable[SwapCallback] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = None if directory is None else os.fspath(directory)
        self.default_region = default_region
        self.build_chain = build_chain
        self.on_swap: list[SwapCallback] = list(on_swap)
        self._clock = clock
        files = self.read()
        self.snapshot: Snapshot[PolicyTable] = Snapshot(self._compile(files))
        self.content_hash = self._seen_hash = files.content_hash
        self.loaded_at = self.attempted_at = clock()
        self.last_error: list[str] | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0

    @property
    def table(self) -> PolicyTable:
        """The table being served."""
        return self.snapshot.current

    def read(self) -> PolicyFiles:
        """Read the policy files (disk I/O: off the event loop when called from async code)."""
        if self.directory is None:
            return builtin_files()
        return read_policy_files(self.directory)

    def reload(self, force: bool = False) -> ReloadResult:
        """Read the directory and swap in a new table if its content changed and compiles."""
        return self.apply(self.read(), force)

    def apply(self, files: PolicyFiles, force: bool = False) -> ReloadResult:
        """Compile already-read files and swap the table, or keep the last good one."""
        if not force and not self.changed(files):
            return self.unchanged()
        return self.commit(files, self.build(files))

    def changed(self, files: PolicyFiles) -> bool:
        """Whether these files differ from the last ones tried."""
        return files.content_hash != self._seen_hash

    def unchanged(self) -> ReloadResult:
        """The result for content already tried; carries its problems if it failed."""
        return ReloadResult("unchanged", tuple(self.last_error or ()))

    def build(self, files: PolicyFiles) -> PolicyTable | list[str]:
        """A new table, or the problems; touches no state, so it may run in a thread."""
        try:
            table = self._compile(files)
        except PolicyError as exc:
            return [str(p) for p in exc.problems]
        except Exception as exc:  # a chain factory that rejects a policy must not kill reload
            return [f"cannot build the guard chain: {exc!r}"]
        region = self.default_region
        if region in self.table.regions and region not in table.regions:
            # The pod would fall back to the default policy without a word: a file renamed
            # or deleted by mistake is a failed reload, not a silent change of policy.
            return [f"the pod's region {region!r} is no longer in the policies"]
        return table

    def commit(self, files: PolicyFiles, built: PolicyTable | list[str]) -> ReloadResult:
        """Swap in a built table, or record why the last good one stays."""
        self._seen_hash = files.content_hash
        self.attempted_at = self._clock()
        if isinstance(built, list):
            return self._failed(built)
        self._swap(built, files.content_hash)
        return ReloadResult("ok")

    def status(self) -> dict[str, Any]:
        """A JSON-able account of what is served and how reloads went."""
        table = self.table
        regions = {
            name: {
                "version": entry.version,
                "sources": list(entry.sources),
                "description": entry.policy.description,
                "models": {m.name: m.spec.description for m in entry.models},
            }
            for name, entry in sorted(table.regions.items())
        }
        return {
            "directory": self.directory,
            "default_region": table.default_region,
            "content_hash": self.content_hash,
            "regions": regions,
            "loaded_at": _iso(self.loaded_at),
            "attempted_at": _iso(self.attempted_at),
            "last_error": self.last_error,
            "reloads_ok": self.reloads_ok,
            "reloads_failed": self.reloads_failed,
        }

    def _compile(self, files: PolicyFiles) -> PolicyTable:
        return compile_table(load_files(files), self.default_region, self.build_chain)

    def _swap(self, table: PolicyTable, content_hash: str) -> None:
        self.snapshot.publish(table)
        self.content_hash = content_hash
        self.loaded_at = self.attempted_at
        self.last_error = None
        self.reloads_ok += 1
        versions = " ".join(f"{n}={e.version}" for n, e in sorted(table.regions.items()))
        log.info("policies reloaded: %s", versions)
        for callback in self.on_swap:
            try:
                callback(table)
            except Exception:
                log.exception("policy swap callback %r failed", callback)

    def _failed(self, problems: list[str]) -> ReloadResult:
        self.last_error = problems
        self.reloads_failed += 1
        log.warning(
            "policy reload failed, still serving the last good policies: %s", " | ".join(problems)
        )
        return ReloadResult("failed", tuple(problems))


class PolicyWatcher:
    """Polls the policy directory's content hash and reloads the store when it changes."""

    def __init__(self, store: PolicyStore, interval: float = 2.0) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.store = store
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._reads = 0  # checks begun, each numbered when it starts reading
        self._committed = 0  # the number of the last check whose result was committed

    @property
    def running(self) -> bool:
        """Whether the polling task is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start polling; nothing to watch for the embedded default."""
        if self._task is None and self.store.directory is not None:
            self._task = asyncio.create_task(self._run(), name="guardproxy-policy-watcher")

    async def stop(self) -> None:
        """Stop polling and wait for the task to end."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def check(self, force: bool = False) -> ReloadResult:
        """Read and compile in a thread when the content changed (or forced); swap on the loop.

        The poller, SIGHUP and the admin endpoint may check at once: a check that read before
        one already committed is dropped, so an older read never replaces a newer one.
        """
        store = self.store
        self._reads += 1
        number = self._reads
        files = await asyncio.to_thread(store.read)
        if not force and not store.changed(files):
            return store.unchanged()
        built = await asyncio.to_thread(store.build, files)
        if number < self._committed:
            return store.unchanged()
        self._committed = number
        return store.commit(files, built)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:
                log.exception("policy watcher check failed; retrying in %.1fs", self.interval)


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
