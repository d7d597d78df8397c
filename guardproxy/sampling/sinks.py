"""Sample sinks: a bounded queue on the hot path, a writer that redacts and writes off it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from guardproxy.sampling.jsonl import JsonlSink
from guardproxy.sampling.redact import Redactor, encoded

__all__ = [
    "JsonlSink",
    "RedisStreamSink",
    "Sample",
    "SampleQueue",
    "SampleWriter",
    "Sink",
    "SinkError",
]

log = logging.getLogger("guardproxy.sinks")
# A sample this small (~0.1 ms to redact a tabular one, under 2 ms for text built to be
# slow) is redacted on the event loop, between requests: in a thread, Python code holding the
# GIL makes the loop wait up to the switch interval at every wakeup. A larger one goes to a
# thread, which cannot hold the loop for its whole redaction.
INLINE_BYTES = 2048
QUEUE_BYTES = 64 * 1024 * 1024  # bytes the waiting samples may hold, by default
# What a sample whose size is not known (a gRPC document, streamed text) counts as: about
# what its redacted record keeps, sampling.max_body_bytes by default.
UNSIZED = 64 * 1024


class SinkError(ValueError):
    """The policy names a sink this process cannot write to."""


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
    size: int = -1  # bytes of both bodies as they crossed the wire; -1: not known

    def record(self, fallback: Redactor | None = None) -> dict[str, Any]:
        """The JSON record to store, with the bodies redacted."""
        redactor = self.redactor or fallback
        if redactor is None:
            raise ValueError("a sample needs a redactor before it is stored")
        request = _redacted(redactor, self.request, bounded=False)
        response = _redacted(redactor, self.response, bounded=True)
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


@runtime_checkable
class Deferred(Protocol):
    """A body kept undecoded (binary tensors, a gRPC message) until its sample is written."""

    def document(self, limit: int | None = None) -> dict[str, Any]:
        """The body decoded; over `limit` bytes only what describes it."""


def _redacted(redactor: Redactor, body: bytes | Any, bounded: bool) -> Any:
    """A body redacted: bytes as JSON or text, a binary tensor body decoded, a document walked."""
    if isinstance(body, bytes):
        return redactor.body(body)
    if isinstance(body, Deferred):  # decoded here, off the hot path; cut like any answer
        return redactor.bounded(body.document(redactor.max_bytes))
    return redactor.bounded(body) if bounded else redactor.document(body)


def held_bytes(sample: Sample) -> int:
    """The bytes a waiting sample keeps alive: its bodies, or UNSIZED when not known."""
    return sample.size if sample.size >= 0 else UNSIZED


class SampleQueue:
    """A queue bounded in samples and in the bytes they hold; offering never blocks, a full
    queue drops and counts.

    The bounds are plain attributes: the process sizes them from the default policy's
    `sampling.sink.queue` and `queue_bytes` once that policy is compiled, after the guards
    hold the queue. Bytes stay counted until the writer has written (or dropped) the sample.
    """

    __slots__ = ("always_capped", "dropped", "held", "max_bytes", "maxsize", "offered", "queue")

    def __init__(self, maxsize: int = 10_000, max_bytes: int = QUEUE_BYTES) -> None:
        self.queue: asyncio.Queue[Sample] = asyncio.Queue()
        self.maxsize, self.max_bytes = maxsize, max_bytes
        self.offered = 0
        self.dropped = 0
        self.held = 0  # bytes of the samples offered and not yet written
        self.always_capped = 0  # exchanges past a window's sampling.max_always

    def offer(self, sample: Sample) -> bool:
        """Enqueue without waiting; False (and counted) when the queue is full."""
        self.offered += 1
        size = held_bytes(sample)
        if self.queue.qsize() >= self.maxsize or self.held + size > self.max_bytes:
            self.dropped += 1
            return False
        self.held += size
        self.queue.put_nowait(sample)
        return True

    def release(self, batch: list[Sample]) -> None:
        """The writer is done with these samples: their bytes are free again."""
        self.held -= sum(map(held_bytes, batch))


class Sink(Protocol):
    """Where redacted records go."""

    async def write(self, records: list[dict[str, Any]]) -> None:
        """Store a batch of records."""

    async def close(self) -> None:
        """Release files or connections."""

    async def maintain(self) -> None:
        """Housekeeping when idle (retention); nothing for sinks that need none."""

    def status(self) -> dict[str, Any]:
        """What the sink holds and what it had to drop, for /status."""


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
                    self.stream, {"sample": encoded(record)}, maxlen=self.maxlen, approximate=True
                )
            await pipe.execute()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    async def maintain(self) -> None:
        """Nothing to do: the stream is capped by XADD MAXLEN."""

    def status(self) -> dict[str, Any]:
        """The stream and its cap."""
        return {"redis_stream": self.stream, "maxlen": self.maxlen}


class SampleWriter:
    """Drains the queue in batches, redacts (small samples between requests), writes to the sink."""

    def __init__(
        self,
        queue: SampleQueue,
        sink: Sink,
        redactor: Redactor | None = None,
        batch: int = 256,
        maintain_every: float = 60.0,
        gather: float = 0.0,
    ) -> None:
        self.queue = queue
        self.sink = sink
        self.redactor = redactor or Redactor((), ("email", "phone", "card", "national_id"))
        self.batch = batch
        self.maintain_every = maintain_every
        # Seconds to let a batch gather after its first sample: each batch costs a thread
        # hand-off, which at one sample per batch cost more than the sample itself.
        self.gather = gather
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.truncated = 0
        self.batches = 0
        self._task: asyncio.Task[None] | None = None
        self._idle = True
        self._closing = False

    def status(self) -> dict[str, Any]:
        """Samples offered, dropped, capped (max_always), written, cut; the sink's own."""
        return {
            "offered": self.queue.offered,
            "dropped": self.queue.dropped + self.dropped,
            "queue_full": self.queue.dropped,
            "queue_size": self.queue.maxsize,
            "queue_bytes": self.queue.max_bytes,
            "held_bytes": self.queue.held,
            "always_capped": self.queue.always_capped,
            "written": self.written,
            "errors": self.errors,
            "truncated": self.truncated,
            "batches": self.batches,
            "sink": self.sink.status(),
        }

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
            try:
                first = await asyncio.wait_for(self.queue.queue.get(), self.maintain_every)
            except TimeoutError:
                self._idle = False  # stop() waits for this rather than racing it in a thread
                await self._maintain()
                continue
            self._idle = False  # from here stop() waits: the sample taken is written
            if self.gather and self.queue.queue.qsize() < self.batch:
                await asyncio.sleep(self.gather)
            await self._write(self._drain([first]))

    async def _maintain(self) -> None:
        try:
            await self.sink.maintain()
        except Exception:  # housekeeping that fails is retried next time, never fatal
            self.errors += 1
            log.exception("sample sink maintenance failed")

    def _drain(self, batch: list[Sample]) -> list[Sample]:
        get = self.queue.queue.get_nowait
        while len(batch) < self.batch and not self.queue.queue.empty():
            batch.append(get())
        return batch

    async def _write(self, batch: list[Sample]) -> None:
        try:
            records = await self._records(batch)
            await self.sink.write(records)
        except Exception:  # a failing sink never stops the writer
            self.errors += 1
            self.dropped += len(batch)
            log.exception("sample sink failed; %d samples lost", len(batch))
        else:
            self.written += len(records)
            self.batches += 1
        finally:
            self.queue.release(batch)

    async def _records(self, batch: list[Sample]) -> list[dict[str, Any]]:
        records = []
        for sample in batch:
            if 0 <= sample.size <= INLINE_BYTES:
                records.append(self._record(sample))
                await asyncio.sleep(0)  # requests run between samples
            else:
                records.append(await asyncio.to_thread(self._record, sample))
        return records

    def _record(self, sample: Sample) -> dict[str, Any]:
        redactor = sample.redactor or self.redactor
        before = redactor.truncated
        record = sample.record(self.redactor)
        self.truncated += redactor.truncated - before
        return record
