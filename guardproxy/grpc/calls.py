"""What the policy hook reads from one gRPC call: its request id, region, model and metadata.

Metadata is as untrusted as HTTP headers: the request id is kept only when well-formed, the
region key counts only when the operator named one, and the model comes from the request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from ..policy.table import CompiledModel, CompiledPolicy
from ..transport import Headers
from .hooks import InferCall, Metadata

__all__ = [
    "MAX_REQUEST_ID",
    "REQUEST_ID",
    "headers_of",
    "metadata_value",
    "model_of",
    "new_request_id",
    "request_id_of",
]

REQUEST_ID = "x-request-id"
MAX_REQUEST_ID = 128
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,128}")


def new_request_id() -> str:
    """A random 128-bit id, hex encoded."""
    return os.urandom(16).hex()


def metadata_value(metadata: Metadata, key: str) -> str | None:
    """The first text value of a (lower-case) metadata key."""
    for name, value in metadata:
        if name == key and isinstance(value, str):
            return value
    return None


def request_id_of(call: InferCall) -> tuple[str, bool]:
    """The call's request id and whether a client's malformed id was replaced.

    A unary call's `x-request-id` metadata, else the request's OIP `id`; a stream message
    has only its `id` (the stream's metadata is shared by all its messages). Kept when
    1-128 letters, digits or `._:-`, else a new id: the id reaches records, samples and logs.
    """
    candidates = [call.request.get("id")]
    if call.method == "ModelInfer":
        candidates.insert(0, metadata_value(call.metadata, REQUEST_ID))
    for value in candidates:
        if not value:
            continue
        if isinstance(value, str) and well_formed(value):
            return value, False
        return new_request_id(), True
    return new_request_id(), False


def well_formed(value: str) -> bool:
    """1-128 letters, digits or `._:-`."""
    return len(value) <= MAX_REQUEST_ID and _WELL_FORMED.fullmatch(value) is not None


def headers_of(metadata: Iterable[tuple[str, str | bytes]]) -> Headers:
    """Text metadata as the headers a guard reads (`X-Group` is metadata `x-group`)."""
    return Headers([(k.encode(), v.encode()) for k, v in metadata if isinstance(v, str)])


def model_of(policy: CompiledPolicy, name: str, version: str) -> CompiledModel | None:
    """The model that guards an OIP call: declared by name, else the one whose routes the
    equivalent HTTP path matches (so `/v2/models/*/infer` covers gRPC calls as well)."""
    model = policy.model(name)
    if model is None and _SEGMENT.fullmatch(name):
        if not version:
            model = policy.match(f"/v2/models/{name}/infer")
        elif _SEGMENT.fullmatch(version):
            model = policy.match(f"/v2/models/{name}/versions/{version}/infer")
    return model
