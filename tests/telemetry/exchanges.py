"""A transport request and its response writer over an in-memory connection, for tracer tests."""

from __future__ import annotations

from collections.abc import Iterable

from guardproxy.transport import HeaderList, Headers, Request, ResponseWriter
from guardproxy.transport.body import BodyBuffer


class Connection:
    """What a request and its writer ask of a server connection; keeps what is written."""

    closing = False
    write_paused = False
    buffered = 0

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def want_body(self, request: Request) -> None:
        """The body is already complete."""

    def pause_body(self) -> None:
        """Nothing to pause."""

    def resume_body(self) -> None:
        """Nothing to resume."""

    def keeps_alive(self, request: Request) -> bool:
        """Always."""
        return True

    def write(self, data: bytes) -> None:
        """Keep the bytes."""
        self.written.append(data)

    def writelines(self, data: Iterable[bytes]) -> None:
        """Keep the bytes."""
        self.written.extend(data)

    async def drain(self) -> None:
        """Never full."""

    def response_done(self, writer: ResponseWriter) -> None:
        """Nothing follows."""

    def abort(self) -> None:
        """Remember it."""
        self.aborted = True


def request(
    method: bytes = b"POST", target: bytes = b"/v2/models/m/infer", headers: HeaderList = ()
) -> tuple[Request, ResponseWriter, Connection]:
    """A parsed request with an empty, complete body, and a writer for its answer."""
    connection = Connection()
    body = BodyBuffer(connection, 1 << 16)
    body.finish()
    head = Headers([(b"Host", b"p:8080"), *headers])
    parsed = Request(connection, method, target, "1.1", head, ("10.0.0.1", 5), True, body)
    return parsed, ResponseWriter(connection, parsed), connection
