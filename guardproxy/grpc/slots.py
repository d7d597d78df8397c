"""Upstream slots per model for inference calls, as the HTTP path bounds its upstream requests.

Each unary ModelInfer call takes a slot of its key in a `KeyLimiter` (the
`--upstream-concurrency` / `--upstream-queue` settings) before its request goes upstream, and
gives it back when the call ends; streams take none (an idle one would hold it). A call that
finds the queue full, or waits longer than the limiter's timeout, is refused RESOURCE_EXHAUSTED.
The key is the hook's (`PolicyHook.slot_key`: region/model for a guarded model, `unguarded` for
every other call), read from the request's model name and version without decoding its tensors:
a large request waits in the queue as the bytes gRPC received, not as a decoded message too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..transport.errors import UpstreamError
from ..transport.limiter import KeyLimiter
from .generated import grpc_predict_v2_pb2 as pb
from .hooks import Metadata, Refuse
from .stats import GrpcStats

__all__ = ["UNGUARDED", "CallSlots", "SlotKey", "request_target"]

UNGUARDED = "unguarded"  # the key of calls no guarded model takes (the HTTP path's pool key)
# The key of a call to model (name, version) with this client metadata.
SlotKey = Callable[[str, str, Metadata], str]


def request_target(request: bytes) -> tuple[str, str]:
    """The model name and version of a serialized ModelInferRequest, its tensors not decoded.

    Read as protobuf reads the whole request, the last `model_name` and `model_version` winning
    wherever they are: a request that named one model first and another last would otherwise
    take the first one's slots while the guards (and the model) served the last. A
    ModelMetadataRequest has the same two fields (name 1, version 2) and nothing else: it
    parses them in C and passes over the tensors as unknown fields, dropped at once.
    ("", "") for bytes that are no request.
    """
    try:
        header = pb.ModelMetadataRequest.FromString(request)
    except DecodeError:
        return "", ""
    return header.name, header.version


def _unguarded(name: str, version: str, metadata: Metadata) -> str:
    return UNGUARDED


class CallSlots:
    """The proxy's slots: a limiter (None: no bound) and the key each call takes."""

    def __init__(self, limiter: KeyLimiter | None, key: SlotKey | None, stats: GrpcStats) -> None:
        self.limiter = limiter
        self.key = key or _unguarded
        self.stats = stats

    def key_of(self, request: bytes, metadata: Metadata) -> str:
        """The key of the call this request belongs to."""
        if self.limiter is None:
            return UNGUARDED  # no slots to take: nothing to read
        name, version = request_target(request)
        return self.key(name, version, metadata)

    async def take(self, key: str) -> Refuse | None:
        """Wait for a slot of `key` (None: taken, release it), or the refusal (counted)."""
        limiter = self.limiter
        if limiter is None or limiter.try_acquire(key):
            return None
        try:
            await limiter.acquire(key)
        except UpstreamError as exc:
            self.stats.busy[key] += 1
            message = f"busy: {exc.message} ({key}); retry later"
            return Refuse(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        return None

    def release(self, key: str) -> None:
        """Give back a slot `take` gave."""
        if self.limiter is not None:
            self.limiter.release(key)

    def status(self) -> dict[str, Any]:
        """The limits, and the calls running and waiting per key, for /status."""
        limiter = self.limiter
        if limiter is None:
            return {"limit": None}
        return {
            "limit": limiter.limit,
            "queue": limiter.queue,
            "queue_timeout": limiter.timeout,
            "keys": limiter.as_dict(),
        }
