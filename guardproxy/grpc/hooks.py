"""What the gRPC proxy asks the guards, and how their answers become gRPC statuses.

For each ModelInfer call (and each message of a ModelStreamInfer stream) the proxy calls
`hook.on_request(call)` before the upstream and `hook.on_response(call, answer, final)` after
it (a stream's decoupled model may answer one request several times: `final` is False for all
but its last answer).
`on_request` returns None (go on) or a `Refuse`; `on_response` returns `Allow` (with
metadata to add and, optionally, a changed answer document) or a `Refuse`. A call that
`on_request` let through and that ends without an answer document for `on_response` (the
upstream failed, the client cancelled, the stream ended first, the answer could not be
decoded) is reported once to `hook.on_failure(call, failure)`, whose metadata a unary call
gets in its trailers. Each `InferCall` is hashed by identity, so a hook may key its own
per-call state by the call. Any other method is forwarded as bytes once
`hook.refuses(method, metadata)` returns None (a `Refuse` ends it before the upstream).

Refusals, as `status_for(http_status)` maps the proxy's HTTP replies:

| situation                                   | HTTP | gRPC status           |
|---------------------------------------------|------|-----------------------|
| breaker open, action `reject`               | 503  | UNAVAILABLE + retry   |
| label guard `block` (policy status, 422)    | 422  | FAILED_PRECONDITION   |
| refused for the caller (e.g. a region rule) | 403  | PERMISSION_DENIED     |
| no guarded model (`unguarded: refuse`)      | 404  | NOT_FOUND             |
| body or batch too large                     | 413  | RESOURCE_EXHAUSTED    |
| malformed request                           | 400  | INVALID_ARGUMENT      |
| guard `fail_closed` could not check         | 502  | INTERNAL              |
| upstream timed out                          | 504  | DEADLINE_EXCEEDED     |

A refusal with `retry_after` carries it three ways in the trailing metadata: `retry-after`
(seconds, as HTTP), `grpc-retry-pushback-ms` (what gRPC retry policies honour) and a
`google.rpc.RetryInfo` in `grpc-status-details-bin` (what `grpc_status.rpc_status` reads).
In a unary call, `Allow.metadata` is sent as response headers (initial metadata); in a
stream, each answer message gets it as string `parameters` of its ModelInferResponse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "Allow",
    "AllowAll",
    "Failure",
    "InferCall",
    "InferHook",
    "Metadata",
    "Refuse",
    "http_status",
    "refusal_trailers",
    "status_for",
]

Metadata = tuple[tuple[str, str | bytes], ...]

_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.FAILED_PRECONDITION,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


# The HTTP status a gRPC status stands for (as grpc-gateway maps them), for observations.
_HTTP = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status a gRPC status stands for (UNAVAILABLE 503, NOT_FOUND 404, ...)."""
    return _HTTP.get(code, 500)


def status_for(http_status: int) -> grpc.StatusCode:
    """The gRPC status for one of the proxy's HTTP refusals (table in the module docstring)."""
    if http_status in _STATUS:
        return _STATUS[http_status]
    return (
        grpc.StatusCode.FAILED_PRECONDITION if 400 <= http_status < 500 else grpc.StatusCode.UNKNOWN
    )


@dataclass(frozen=True, slots=True, eq=False)
class InferCall:
    """One inference request as the guards see it."""

    method: str  # "ModelInfer" or "ModelStreamInfer"
    model_name: str
    model_version: str
    request: dict[str, Any]  # the JSON-protocol document's header: model, version, id, ...
    metadata: Metadata  # the client's metadata (keys lower case; -bin values are bytes)
    peer: str
    message: Any = None  # the ModelInferRequest: its tensors are decoded by whoever reads them


@dataclass(frozen=True, slots=True)
class Allow:
    """Pass the answer, adding metadata; `response` (a changed document) replaces its outputs."""

    metadata: tuple[tuple[str, str], ...] = ()
    response: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Refuse:
    """End the call with this status instead of the answer."""

    code: grpc.StatusCode
    message: str
    metadata: tuple[tuple[str, str], ...] = ()
    retry_after: float | None = None  # seconds; sent as retry metadata


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a call the hook let through ended without an answer document."""

    code: grpc.StatusCode  # the upstream's; CANCELLED: no answer came; OK: it was undecodable
    message: str


class InferHook(Protocol):
    """What the proxy calls around each inference; both methods must not block the loop."""

    async def on_request(self, call: InferCall) -> Refuse | None:
        """Before the upstream: None to go on, or a refusal (e.g. the breaker is open)."""

    def reads_answer(self, call: InferCall) -> bool:
        """Whether on_response reads the answer's document (else it gets an empty one)."""

    def request_id(self, call: InferCall) -> str | None:
        """The id the hook settled on for an admitted call (sent upstream), None for none."""

    async def on_response(
        self, call: InferCall, response: dict[str, Any], final: bool = True
    ) -> Allow | Refuse:
        """After the upstream: an answer's document (more follow unless `final`); allow
        (maybe changed) or refuse."""

    async def on_failure(self, call: InferCall, failure: Failure) -> Metadata:
        """The call ended without an answer to check; metadata for a unary call's trailers."""

    def refuses(self, method: str, metadata: Metadata) -> Refuse | None:
        """Before any other method goes upstream: None to go on, or a refusal."""


class AllowAll:
    """The hook when none is given: every call passes untouched."""

    async def on_request(self, call: InferCall) -> Refuse | None:
        """Always go on."""
        return None

    def reads_answer(self, call: InferCall) -> bool:
        """Never: nothing is checked."""
        return False

    def request_id(self, call: InferCall) -> str | None:
        """None: the client's metadata goes upstream as it came."""
        return None

    async def on_response(
        self, call: InferCall, response: dict[str, Any], final: bool = True
    ) -> Allow | Refuse:
        """Always allow, adding nothing."""
        return Allow()

    async def on_failure(self, call: InferCall, failure: Failure) -> Metadata:
        """Nothing to record."""
        return ()

    def refuses(self, method: str, metadata: Metadata) -> Refuse | None:
        """Never: every method goes on."""
        return None


def refusal_trailers(refuse: Refuse) -> Metadata:
    """The trailing metadata of a refusal: its own, plus retry information when it has some."""
    trailers: list[tuple[str, str | bytes]] = list(refuse.metadata)
    if refuse.retry_after is None:
        return tuple(trailers)
    seconds = max(0.0, refuse.retry_after)
    whole = math.floor(seconds)
    delay = duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    code = refuse.code.value[0]
    status = status_pb2.Status(code=code, message=refuse.message, details=[detail])
    trailers += [
        ("retry-after", str(math.ceil(seconds))),
        ("grpc-retry-pushback-ms", str(round(seconds * 1000))),
        ("grpc-status-details-bin", status.SerializeToString()),
    ]
    return tuple(trailers)
