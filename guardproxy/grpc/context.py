"""What the proxy passes along of a call's context, and how it reads the way a call ended."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import grpc
from grpc import aio

from ..hotpath.trust import well_formed_id
from .calllog import CallLog
from .calls import metadata_value
from .hooks import Metadata

__all__ = ["INFER", "STREAM_INFER", "cancelled", "ended", "forwardable", "upstream_metadata"]

SERVICE = "/inference.GRPCInferenceService/"
INFER = SERVICE + "ModelInfer"
STREAM_INFER = SERVICE + "ModelStreamInfer"
# Connection-level headers gRPC sets itself; all other metadata travels both ways.
_HOP = frozenset({"content-type", "te", "user-agent", "host", "connection", "accept-encoding"})
# A failed call's rich status (google.rpc.Status): the only reserved key an application sets.
DETAILS = "grpc-status-details-bin"
REQUEST_ID = "x-request-id"


def forwardable(metadata: Iterable[tuple[str, Any]] | None, details: bool = False) -> Metadata:
    """Metadata without pseudo-headers, reserved `grpc-*` keys and connection headers; with
    `details`, a failure's `grpc-status-details-bin` kept."""
    return tuple(
        (key, value)
        for key, value in metadata or ()
        if (details and key == DETAILS) or (not key.startswith((":", "grpc-")) and key not in _HOP)
    )


def upstream_metadata(
    context: aio.ServicerContext[bytes, bytes], calls: CallLog, request_id: str | None = None
) -> Metadata:
    """The client's metadata as it goes upstream, naming the call's span as the trace parent;
    with the `request_id` the proxy settled on in place of every `x-request-id` the client
    sent (a malformed one, or two, must not reach the model's logs). Without one (a stream,
    another method), the client's first id goes on when well formed, as the call's log
    line records it, else none."""
    metadata = forwardable(context.invocation_metadata())
    if request_id is None:
        first = metadata_value(metadata, REQUEST_ID)
        request_id = first if first is not None and well_formed_id(first) else None
    kept = tuple((key, value) for key, value in metadata if key != REQUEST_ID)
    return calls.upstream(kept if request_id is None else (*kept, (REQUEST_ID, request_id)))


def ended(context: aio.ServicerContext[bytes, bytes], exc: BaseException) -> grpc.StatusCode:
    """The status of a call that raised: the one it was aborted with, else why it was cut."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return cancelled(context)[0]
    return grpc.StatusCode.UNKNOWN


def cancelled(context: aio.ServicerContext[bytes, bytes]) -> tuple[grpc.StatusCode, str]:
    """Why gRPC cancelled a call: the client's deadline passed, or the client went away."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the client's deadline passed"
    return grpc.StatusCode.CANCELLED, "the client cancelled the call"
