"""An answer from the upstream: status and headers at once, the body read or streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import TracebackType

from .body import BodyBuffer
from .errors import UpstreamError
from .headers import Headers


def too_large(limit: int) -> UpstreamError:
    """The answer is bigger than the caller accepts."""
    return UpstreamError(502, "too_large", f"upstream answer larger than {limit} bytes")


class UpstreamResponse:
    """Read the body to its end (read/stream) or release() it; either frees the slot."""

    __slots__ = (
        "_on_release",
        "_released",
        "body",
        "headers",
        "keep_alive",
        "reason",
        "status",
        "version",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: str,
        headers: Headers,
        keep_alive: bool,
        body: BodyBuffer,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = body
        self._on_release: Callable[[UpstreamResponse], None] | None = None
        self._released = False

    def bind(self, on_release: Callable[[UpstreamResponse], None]) -> None:
        """Called by the pool: what release() does."""
        self._on_release = on_release

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived."""
        return self.body.done

    @property
    def buffered_peak(self) -> int:
        """The most body bytes this answer ever held in memory at once."""
        return self.body.peak

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (UpstreamError 502 over `limit` bytes); releases the answer."""
        try:
            return await self.body.read(limit, too_large)
        finally:
            self.release()

    async def stream(self) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive; releases the answer at the end."""
        try:
            async for chunk in self.body.chunks():
                yield chunk
        finally:
            self.release()

    def release(self) -> None:
        """Done with this answer: an unfinished body closes its connection."""
        if not self._released:
            self._released = True
            if self._on_release is not None:
                self._on_release(self)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
