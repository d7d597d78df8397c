"""The exceptions the transport raises, each carrying what the peer should be told."""

from __future__ import annotations


class TransportError(Exception):
    """Base of every error raised by guardproxy.transport."""


class RequestError(TransportError):
    """A client's request cannot be served; `status` is the answer the server gives."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.counted = False  # set when the transport has already counted it


def counted(error: RequestError) -> RequestError:
    """Mark an error the transport has already counted, so it is not counted twice."""
    error.counted = True
    return error


class BadRequest(RequestError):
    """Malformed framing or syntax in the request (its body included)."""

    status = 400


class BodyTooLarge(RequestError):
    """The request body is larger than the limit the handler asked for."""

    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


class RequestTimeout(RequestError):
    """The client sent its headers or body too slowly."""

    status = 408


class ClientDisconnected(TransportError, ConnectionError):
    """The client connection is gone: nothing more can be read from or written to it."""


class UpstreamError(TransportError):
    """The upstream could not be reached or did not answer; `status` is for the client.

    `kind` names the failure for counters (refused, reset, closed, protocol, timeout_connect,
    timeout_read, timeout_total, too_large, busy). `retryable` is set only when the request
    failed on a reused connection before any byte of an answer arrived.
    """

    def __init__(self, status: int, kind: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.retryable = retryable
