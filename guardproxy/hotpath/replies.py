"""What the proxy answers by itself, the headers it adds to answers, and its counters.

Every error the proxy gives is JSON naming the request (`{"error": ..., "request_id": ...}`
and X-Request-Id), in fixed wording: never an exception's text, an address or a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from guardproxy.breaker.state import CircuitBreaker
from guardproxy.guards.base import GuardChain
from guardproxy.guards.exchange import Exchange, dumps
from guardproxy.hotpath.trust import request_id_of
from guardproxy.payloads.binary_bodies import BinaryBodies
from guardproxy.policy.table import CompiledModel
from guardproxy.transport import HeaderList, HeaderPairs, Request, RequestError, ResponseWriter

JSON = (b"Content-Type", b"application/json")
REQUEST_ID = b"X-Request-Id"
# Names of the annotations guards set, as bytes once (anything else is encoded per use).
_NAMES = {
    name: name.encode()
    for name in (
        "X-Guard-Decision",
        "X-Guard-Threshold",
        "X-Guard-Threshold-Version",
        "X-Guard-Labels",
        "X-Guard-Flag",
        "X-Guard-Breaker",
        "X-Guard-Upstream",
    )
}
MAX_MODELS = 1024  # models whose constant headers are kept (policies are reloaded, not grown)


class Refusal(RequestError):
    """A request the proxy answers itself before the upstream sees it (400, 413, 415, 503)."""

    def __init__(self, status: int, message: str, headers: HeaderList | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers  # sent with the error answer (a 503's Retry-After)


@dataclass(slots=True)
class BinaryCounts:
    """Guarded exchanges in the OIP binary tensor extension, for /status."""

    requests: int = 0
    answers: int = 0
    reencoded: int = 0  # answers a guard changed, written back in the extension
    malformed: int = 0  # a body whose framing or tensors disagreed (the guard's on_error)

    def count(self, binary: BinaryBodies, changed: bool) -> None:
        """Count one finished exchange with a binary request or answer."""
        self.requests += binary.request is not None
        self.answers += binary.response is not None
        self.reencoded += changed and binary.encoded is not None
        self.malformed += binary.malformed


@dataclass(slots=True)
class ProxyCounts:
    """Plain counters the admin port reports; ints, so no locks in a single event loop."""

    requests: int = 0
    guarded: int = 0
    unguarded: int = 0
    unguarded_refused: int = 0  # a path no model guards, where the region refuses them
    in_flight: int = 0
    unknown_region: int = 0
    upstream_errors: dict[int, int] = field(default_factory=dict)
    # bad requests (400, 408, 413, 415), and bodies over the --max-buffered budget (503)
    refused: dict[int, int] = field(default_factory=dict)
    aborted: int = 0
    blocked: int = 0
    unguarded_streams: int = 0  # a guarded route answered with a stream no guard reads
    chat_streams: int = 0  # streamed chat answers relayed through the label terms
    chat_streams_blocked: int = 0
    chat_streams_flagged: int = 0
    chat_stream_errors: int = 0  # an event that could not be read (the guard's on_error)
    binary: BinaryCounts = field(default_factory=BinaryCounts)
    request_ids_replaced: int = 0
    internal_errors: int = 0
    client_gone: int = 0
    observer_errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view for /status."""
        return {
            "requests": self.requests,
            "guarded": self.guarded,
            "unguarded": self.unguarded,
            "unguarded_refused": self.unguarded_refused,
            "in_flight": self.in_flight,
            "unknown_region": self.unknown_region,
            "upstream_errors": {str(k): v for k, v in self.upstream_errors.items()},
            "refused": {str(k): v for k, v in self.refused.items()},
            "aborted": self.aborted,
            "blocked": self.blocked,
            "unguarded_streams": self.unguarded_streams,
            "chat_streams": {
                "guarded": self.chat_streams,
                "blocked": self.chat_streams_blocked,
                "flagged": self.chat_streams_flagged,
                "errors": self.chat_stream_errors,
            },
            "binary": {
                "requests": self.binary.requests,
                "answers": self.binary.answers,
                "reencoded": self.binary.reencoded,
                "malformed": self.binary.malformed,
            },
            "request_ids_replaced": self.request_ids_replaced,
            "internal_errors": self.internal_errors,
            "client_gone": self.client_gone,
            "observer_errors": dict(self.observer_errors),
        }


def error_body(message: str, request_id: str, **extra: Any) -> bytes:
    """The JSON body of every error the proxy itself gives."""
    return dumps({"error": message, "request_id": request_id, **extra})


def send_error(
    writer: ResponseWriter,
    status: int,
    message: str,
    request_id: str,
    headers: HeaderList | None = None,
    **extra: Any,
) -> None:
    """Answer an error the proxy itself gives: JSON naming the request, X-Request-Id."""
    head = [JSON, (REQUEST_ID, request_id.encode("latin-1"))]
    if headers:
        head.extend(headers)
    writer.send(status, head, error_body(message, request_id, **extra))


def proxy_error(status: int, message: str, request: Request | None) -> tuple[HeaderPairs, bytes]:
    """The data port server's own error answers (431, 400, 408...), naming the request too."""
    raw = request.headers.get(b"x-request-id") if request is not None else None
    request_id, _ = request_id_of(raw.decode("latin-1") if raw is not None else None)
    return [JSON, (REQUEST_ID, request_id.encode())], error_body(message, request_id)


def fail(
    writer: ResponseWriter,
    status: int,
    message: str,
    request_id: str,
    headers: HeaderList | None = None,
) -> None:
    """An error answer, or a reset when the answer's head is already out."""
    if writer.started:
        writer.abort()
    elif not writer.finished:
        send_error(writer, status, message, request_id, headers)


def header_name(name: str) -> bytes:
    """An annotation's header name as bytes (the common ones encoded once)."""
    return _NAMES.get(name) or name.encode("latin-1")


@dataclass(frozen=True, slots=True)
class ModelWire:
    """What the proxy sends for one compiled model, built once: its headers and pool key."""

    model: CompiledModel
    headers: HeaderList  # X-Guard-Region, -Model and -Policy
    pool_key: str  # the upstream pool's concurrency key: one per (region, model)
    chain: GuardChain  # the model's guard chain (wires are built for guarded models only)


class ModelWires:
    """Each compiled model's wire constants, keyed by identity (a reload builds new ones)."""

    __slots__ = ("_built",)

    def __init__(self) -> None:
        self._built: dict[int, ModelWire] = {}

    def of(self, model: CompiledModel) -> ModelWire:
        """The model's constants, built on its first request."""
        found = self._built.get(id(model))
        if found is not None and found.model is model:
            return found
        if len(self._built) >= MAX_MODELS:
            self._built.clear()
        headers = [
            (b"X-Guard-Region", model.region.encode("latin-1")),
            (b"X-Guard-Model", model.name.encode("latin-1")),
            (b"X-Guard-Policy", model.policy_version.encode("latin-1")),
        ]
        chain = cast(GuardChain, model.chain)
        wire = ModelWire(model, headers, f"{model.region}/{model.name}", chain)
        self._built[id(model)] = wire
        return wire


def annotated(headers: HeaderList, ex: Exchange, constant: HeaderList) -> HeaderList:
    """An answer's headers plus the request id, the model's headers and the guards' notes."""
    headers.append((REQUEST_ID, ex.request_id.encode("latin-1")))
    headers.extend(constant)
    for name, value in ex.annotations.items():  # header_name, inline: a call per header less
        headers.append((_NAMES.get(name) or name.encode("latin-1"), value.encode("latin-1")))
    return headers


def breaker_open(
    writer: ResponseWriter,
    request_id: str,
    model: CompiledModel,
    breaker: CircuitBreaker,
    constant: HeaderList,
) -> None:
    """503 while the breaker is open (reject, or a fallback that is not ready)."""
    headers = [
        (b"Retry-After", str(breaker.retry_after()).encode()),
        (b"X-Guard-Breaker", breaker.state_name.encode()),
        *constant,
    ]
    send_error(
        writer,
        503,
        "circuit breaker open",
        request_id,
        headers,
        region=model.region,
        model=model.name,
        reason=breaker.reason,
    )
