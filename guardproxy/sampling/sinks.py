"""Sample sinks: a bounded queue on the hot path, a writer that redacts and writes off it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from guardproxy.payloads.codec import dumps
from guardproxy.sampling.redact import Redactor

log = logging.getLogger("guardproxy.sinks")


@dataclass(slots=True)
class Sample:
    """One sampled exchange, unredacted: raw bodies, redacted by the writer."""

    request_id: str
    time: float
    region: str
    policy: str
    groups: list[str]
    decisions: list[int]
    thresholds: list[float]
    flags: list[str]
    errors: list[str]
    status: int
    request: bytes | Any  # the body, or the document a decoded (gRPC) request arrived as
    response: bytes | Any
    redactor: Redactor | None = field(default=None, repr=False)

    def record(self, fallback: Redactor | None = None) -> dict[str, Any]:
        """The JSON record to store, with the bodies redacted."""
        redactor = self.redactor or fallback
        if redactor is None:
            raise ValueError("a sample needs a redactor before it is stored")
        request, response = self.request, self.response
        request = (
            redactor.body(request) if isinstance(request, bytes) else redactor.document(request)
        )
        response = (
            redactor.body(response) if isinstance(response, bytes) else redactor.document(response)
        )
        return {
            "request_id": self.request_id,
            "time": datetime.fromtimestamp(self.time, UTC).isoformat(),
            "region": self.region,
            "policy": self.policy,
            "groups": self.groups,
            "decisions": self.decisions,
            "thresholds": self.thresholds,
            "flags": self.flags,
            "errors": self.errors,
            "status": self.status,
            "request": request,
            "response": response,
        }


class SampleQueue:
    """A bounded queue; offering never blocks, a full queue drops and counts."""

    __slots__ = ("dropped", "offered", "queue")

    def __init__(self, maxsize: int = 10_000) -> None:
        self.queue: asyncio.Queue[Sample] = asyncio.Queue(maxsize)
        self.offered = 0
        self.dropped = 0

    def offer(self, sample: Sample) -> bool:
        """Enqueue without waiting; False (and counted) when the queue is full."""
        self.offered += 1
        try:
            self.queue.put_nowait(sample)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True


class Sink(Protocol):
    """Where redacted records go."""

    async def write(self, records: list[dict[str, Any]]) -> None:
        """Store a batch of records."""

    async def close(self) -> None:
        """Release files or connections."""


class JsonlSink:
    """Rotating JSONL files samples-<utc time>.jsonl, rotated on size or age."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int = 64 * 1024 * 1024,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._file: IO[bytes] | None = None
        self._size = 0
        self._opened = 0.0

    async def write(self, records: list[dict[str, Any]]) -> None:
        """Append the records, one JSON line each, in a worker thread."""
        await asyncio.to_thread(self.write_records, records)

    def write_records(self, records: list[dict[str, Any]]) -> None:
        """Serialise and append records (blocking: run it in a thread)."""
        self.write_lines([dumps(r) + b"\n" for r in records])

    def write_lines(self, lines: list[bytes]) -> None:
        """Append lines, rotating before a line would push the file past max_bytes."""
        for line in lines:
            if self._must_rotate(len(line)):
                self._rotate()
            assert self._file is not None
            self._file.write(line)
            self._size += len(line)
        if self._file is not None:
            self._file.flush()

    def _must_rotate(self, size: int) -> bool:
        if self._file is None:
            return True
        if self._size and self._size + size > self.max_bytes:
            return True
        return self._clock() - self._opened >= self.max_age

    def _rotate(self) -> None:
        self._close_file()
        self.directory.mkdir(parents=True, exist_ok=True)
        now = self._clock()
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.directory / f"samples-{stamp}.jsonl"
        serial = 1
        while path.exists():
            path = self.directory / f"samples-{stamp}-{serial}.jsonl"
            serial += 1
        self._file = path.open("ab")
        self._size = 0
        self._opened = now

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    async def close(self) -> None:
        """Close the current file."""
        self._close_file()


class RedisStreamSink:
    """XADD each record to a Redis stream capped at about maxlen entries."""

    def __init__(self, url: str, stream: str, maxlen: int = 100_000) -> None:
        import redis.asyncio as redis_asyncio

        self.stream = stream
        self.maxlen = maxlen
        self._redis = redis_asyncio.from_url(url)

    async def write(self, records: list[dict[str, Any]]) -> None:
        """Add the batch in one pipeline round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.xadd(
                    self.stream, {"sample": dumps(record)}, maxlen=self.maxlen, approximate=True
                )
            await pipe.execute()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


class SampleWriter:
    """Drains the queue in batches, redacts off the event loop, writes to the sink."""

    def __init__(
        self,
        queue: SampleQueue,
        sink: Sink,
        redactor: Redactor | None = None,
        batch: int = 256,
    ) -> None:
        self.queue = queue
        self.sink = sink
        self.redactor = redactor or Redactor((), ("email", "phone", "card", "national_id"))
        self.batch = batch
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self._task: asyncio.Task[None] | None = None
        self._idle = True
        self._closing = False

    def start(self) -> None:
        """Start the writer task."""
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sample-writer")

    async def stop(self, flush: bool = True) -> None:
        """Stop after the batch in flight; with flush, write what is still queued."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            if self._idle:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while flush and not self.queue.queue.empty():
            await self._write(self._drain([]))
        await self.sink.close()

    async def _run(self) -> None:
        while not self._closing:
            self._idle = True
            first = await self.queue.queue.get()
            self._idle = False
            await self._write(self._drain([first]))

    def _drain(self, batch: list[Sample]) -> list[Sample]:
        get = self.queue.queue.get_nowait
        while len(batch) < self.batch and not self.queue.queue.empty():
            batch.append(get())
        return batch

    async def _write(self, batch: list[Sample]) -> None:
        try:
            records = await asyncio.to_thread(self._records, batch)
            await self.sink.write(records)
        except Exception:  # a failing sink never stops the writer
            self.errors += 1
            self.dropped += len(batch)
            log.exception("sample sink failed; %d samples lost", len(batch))
        else:
            self.written += len(records)

    def _records(self, batch: list[Sample]) -> list[dict[str, Any]]:
        return [sample.record(self.redactor) for sample in batch]
