"""An incoming body: chunks buffered as they arrive, the socket paused when too much waits."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol


class ReadFlow(Protocol):
    """The connection side of back-pressure: stop and restart reading the socket."""

    def pause_body(self) -> None:
        """Too much body is buffered: stop reading."""

    def resume_body(self) -> None:
        """The buffer drained: read again."""


TooLarge = Callable[[int], BaseException]
# Pieces smaller than this are copied into one growing buffer rather than kept one object
# each: a bytes object costs ~50 bytes beyond its data, so a body of 2-byte chunks held 28
# times its size, and the high-water mark, counted in body bytes, bounded none of it.
SMALL_PIECE = 1024


class BodyBuffer:
    """Body bytes between the parser and one reader; bounded by pausing the socket."""

    __slots__ = (
        "_chunks",
        "_error",
        "_flow",
        "_high",
        "_paused",
        "_size",
        "_tail",
        "_waiter",
        "done",
        "peak",
        "received",
    )

    def __init__(self, flow: ReadFlow, high_water: int) -> None:
        self._flow = flow
        self._high = high_water
        self._chunks: deque[bytes | bytearray] = deque()
        self._tail: bytearray | None = None  # the last of _chunks while small pieces join it
        self._size = 0
        # Whether the whole body has arrived (it may still sit in the buffer). An attribute,
        # not a property: it is read several times a request, and a property is a call.
        self.done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.received = 0
        self.peak = 0

    @property
    def failed(self) -> bool:
        """Whether the body ended in an error."""
        return self._error is not None

    def feed(self, data: bytes) -> None:
        """Parser side: more body bytes."""
        length = len(data)
        chunks, tail = self._chunks, self._tail
        if length >= SMALL_PIECE:
            self._tail = None  # large pieces are kept as they are: no copy
            chunks.append(data)
        elif tail is not None:
            tail += data
        elif chunks and len(chunks[-1]) < SMALL_PIECE:  # a second small piece: gather
            tail = self._tail = bytearray(chunks[-1])
            tail += data
            chunks[-1] = tail
        else:
            chunks.append(data)  # a body in one small piece stays as it came
        size = self._size = self._size + length
        self.received += length
        if size > self.peak:
            self.peak = size
        if size > self._high and not self._paused:
            self._paused = True
            self._flow.pause_body()
        if self._waiter is not None:
            self._wake()

    def finish(self) -> None:
        """Parser side: the body is complete."""
        self.done = True
        if self._waiter is not None:  # a reader waits (the usual small body has none yet)
            self._wake()

    def fail(self, error: BaseException) -> None:
        """Connection side: the body can never complete; readers get `error`."""
        if not self.done and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        await waiter
        if self._error is not None:
            raise self._error

    def _unpause(self) -> None:
        if self._paused:
            self._paused = False
            self._flow.resume_body()

    async def read(self, limit: int | None, too_large: TooLarge) -> bytes:
        """The whole body; raises `too_large(limit)` as soon as more than `limit` arrived."""
        # The limit bounds memory here, so back-pressure would only stall the read.
        self._high = limit if limit is not None and limit > self._high else (1 << 62)
        if self._paused:
            self._unpause()
        while not self.done:
            if limit is not None and self._size > limit:
                raise too_large(limit)
            await self._wait()
        if limit is not None and self._size > limit:
            raise too_large(limit)
        return self._take_all()

    def _take_all(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._tail = None
        self._size = 0
        return data if isinstance(data, bytes) else bytes(data)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive; each piece is everything buffered so far."""
        while True:
            if self._chunks:
                data = self._take_all()
                self._unpause()
                yield data
            elif self.done:
                return
            else:
                await self._wait()
