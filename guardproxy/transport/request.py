"""One request as the server received it: raw method and target, headers in order, the body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from .body import BodyBuffer
from .errors import BodyTooLarge
from .headers import Headers


class BodySource(Protocol):
    """What a request asks of its connection before the body is read."""

    def want_body(self, request: Request) -> None:
        """The handler asks for the body: answer `Expect: 100-continue` if due."""


class Request:
    """A parsed request; the body is read with `read()` or `stream()`, once."""

    __slots__ = (
        "_expects",
        "_source",
        "body",
        "continued",
        "headers",
        "keep_alive",
        "method",
        "peer",
        "target",
        "version",
    )

    def __init__(
        self,
        source: BodySource,
        method: bytes,
        target: bytes,
        version: str,
        headers: Headers,
        peer: tuple[str, int] | None,
        keep_alive: bool,
        body: BodyBuffer,
    ) -> None:
        self._source = source
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.peer = peer
        self.keep_alive = keep_alive
        self.body = body
        self.continued = False
        self._expects: bool | None = None

    @property
    def path(self) -> bytes:
        """The target up to the query string, still percent-encoded."""
        return self.target.partition(b"?")[0]

    @property
    def query(self) -> bytes:
        """The raw query string (without '?'), empty when there is none."""
        return self.target.partition(b"?")[2]

    @property
    def content_length(self) -> int | None:
        """The declared Content-Length (the parser has checked it is a number)."""
        value = self.headers.get(b"content-length")
        return int(value) if value is not None else None

    @property
    def expects_continue(self) -> bool:
        """Whether the client waits for `100 Continue` before sending its body."""
        if self._expects is None:
            expect = self.headers.get(b"expect")
            self._expects = (
                expect is not None
                and expect.lower() == b"100-continue"
                and self.version == "1.1"
                and not self.body.done
            )
        return self._expects

    @property
    def buffered_peak(self) -> int:
        """The most body bytes this request ever held in memory at once."""
        return self.body.peak

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; BodyTooLarge when it is (or says it will be) over `limit` bytes."""
        if limit is not None and not self.body.done:  # a complete body is measured by reading
            declared = self.content_length
            if declared is not None and declared > limit:
                raise BodyTooLarge(limit)
        self._source.want_body(self)
        return await self.body.read(limit, BodyTooLarge)

    def stream(self) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive, reading paused while the handler lags."""
        self._source.want_body(self)
        return self.body.chunks()

    def __repr__(self) -> str:
        return f"<Request {self.method.decode('latin-1')} {self.path.decode('latin-1')!r}>"
