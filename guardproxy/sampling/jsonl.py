"""Rotating JSONL sample files that stay within a byte budget and a retention time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from guardproxy.sampling.redact import encoded

PREFIX, SUFFIX = "samples-", ".jsonl"
_STAMP = "%Y%m%dT%H%M%S.%fZ"
DEFAULT_MAX_TOTAL = 1024 * 1024 * 1024
DEFAULT_RETENTION = 7 * 86400.0


@dataclass(slots=True)
class SampleFile:
    """A closed sample file: where, how big, when its first record was written."""

    path: Path
    size: int
    opened: float


class JsonlSink:
    """Files samples-<utc time>[suffix].jsonl, rotated on size or age; oldest deleted first.

    Together the files never hold more than max_total_bytes: before a line is written, the
    oldest files are deleted to make room (the current one too if it must). Files whose first
    record is older than `retention` are deleted on every write and every maintain() call.
    Files already in the directory at start count towards the budget. A `suffix` names one
    writer's files where several share the directory: each counts and deletes only its own.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int = 64 * 1024 * 1024,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.time,
        max_total_bytes: int = DEFAULT_MAX_TOTAL,
        retention: float = DEFAULT_RETENTION,
        suffix: str = "",
    ) -> None:
        self.directory = Path(directory)
        self.suffix = suffix
        self.max_bytes, self.max_age = max_bytes, max_age
        self.max_total_bytes, self.retention = max(max_total_bytes, 1), retention
        self._clock = clock
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._size = 0
        self._opened = 0.0
        self._closed: deque[SampleFile] = deque()
        self._closed_bytes = 0
        self._scanned = False
        self.deleted_files = self.deleted_bytes = self.dropped = 0

    async def write(self, records: list[dict[str, Any]]) -> None:
        """Append the records, one JSON line each, in a worker thread."""
        await asyncio.to_thread(self.write_records, records)

    def write_records(self, records: list[dict[str, Any]]) -> None:
        """Serialise and append records (blocking: run it in a thread)."""
        self.write_lines([encoded(r) + b"\n" for r in records])

    def write_lines(self, lines: list[bytes]) -> None:
        """Append lines, rotating and deleting the oldest files to stay within the budget."""
        self._scan()
        self._expire()
        for line in lines:
            if len(line) > self.max_total_bytes:
                self.dropped += 1  # no deletion could make room for it
                continue
            if self._must_rotate(len(line)):
                self._rotate()
            self._make_room(len(line))
            assert self._file is not None
            self._file.write(line)
            self._size += len(line)
        if self._file is not None:
            self._file.flush()

    async def maintain(self) -> None:
        """Delete files past their retention even when nothing is being written."""
        await asyncio.to_thread(self._maintain)

    def _maintain(self) -> None:
        self._scan()
        self._expire()

    @property
    def total_bytes(self) -> int:
        """Bytes in every sample file, the open one included."""
        return self._closed_bytes + self._size

    def status(self) -> dict[str, Any]:
        """The sink's budget, what it holds, and what it deleted or dropped."""
        return {
            "directory": str(self.directory),
            "bytes": self.total_bytes,
            "files": len(self._closed) + (self._file is not None),
            "max_total_bytes": self.max_total_bytes,
            "retention_seconds": self.retention,
            "deleted_files": self.deleted_files,
            "deleted_bytes": self.deleted_bytes,
            "dropped_over_budget": self.dropped,
        }

    def _must_rotate(self, size: int) -> bool:
        if self._file is None:
            return True
        if self._size and self._size + size > self.max_bytes:
            return True
        return self._clock() - self._opened >= self.max_age

    def _make_room(self, size: int) -> None:
        while self.total_bytes + size > self.max_total_bytes:
            if self._closed:
                self._delete(self._closed.popleft())
            elif self._size:
                self._rotate()  # the open file is the oldest left: close it, then delete it
            else:
                return

    def _expire(self) -> None:
        oldest = self._clock() - self.retention
        while self._closed and self._closed[0].opened <= oldest:
            self._delete(self._closed.popleft())
        if self._file is not None and self._opened <= oldest:
            self._close_file()
            self._delete(self._closed.pop())

    def _rotate(self) -> None:
        self._close_file()
        self.directory.mkdir(parents=True, exist_ok=True)
        now = self._clock()
        stamp = datetime.fromtimestamp(now, UTC).strftime(_STAMP)
        path = self.directory / f"{PREFIX}{stamp}{self.suffix}{SUFFIX}"
        serial = 1
        while path.exists():
            path = self.directory / f"{PREFIX}{stamp}{self.suffix}-{serial}{SUFFIX}"
            serial += 1
        self._file, self._path = path.open("ab"), path
        self._size = 0
        self._opened = now

    def _close_file(self) -> None:
        if self._file is None or self._path is None:
            return
        self._file.close()
        self._closed.append(SampleFile(self._path, self._size, self._opened))
        self._closed_bytes += self._size
        self._file = self._path = None
        self._size = 0

    def _delete(self, entry: SampleFile) -> None:
        self._closed_bytes -= entry.size
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        self.deleted_files += 1
        self.deleted_bytes += entry.size

    def _scan(self) -> None:
        """Count the files a previous run left, oldest first (once)."""
        if self._scanned:
            return
        self._scanned = True
        try:
            found = [
                p
                for p in self.directory.glob(f"{PREFIX}*{SUFFIX}")
                if p.is_file() and _owner(p.name) == self.suffix
            ]
        except OSError:
            return
        for entry in sorted((_existing(p) for p in found), key=lambda e: e.opened):
            self._closed.append(entry)
            self._closed_bytes += entry.size

    async def close(self) -> None:
        """Close the current file."""
        self._close_file()


def _owner(name: str) -> str:
    """The writer suffix of a sample file's name ("" for none; a serial "-N" is not one)."""
    rest = name.removeprefix(PREFIX).removesuffix(SUFFIX).partition("-")[2]
    head, _, serial = rest.rpartition("-")
    return ("-" + head if head else "") if serial.isdigit() else ("-" + rest if rest else "")


def _existing(path: Path) -> SampleFile:
    """A file from an earlier run: its size, and its start time from its name (else mtime)."""
    stat = path.stat()
    stamp = path.name.removeprefix(PREFIX).removesuffix(SUFFIX).split("-")[0]
    try:
        opened = datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC).timestamp()
    except ValueError:
        opened = stat.st_mtime
    return SampleFile(path, stat.st_size, opened)
