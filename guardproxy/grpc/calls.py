"""What the policy hook reads from one gRPC call: its request id, region, model and metadata.

Metadata is as untrusted as HTTP headers: the request id is kept only when well-formed, the
region key counts only when the operator named one, and the model comes from the request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..hotpath.trust import new_request_id
from ..hotpath.trust import request_id_of as checked_id
from ..policy.table import CompiledModel, CompiledPolicy
from ..transport import Headers
from .hooks import InferCall, Metadata

__all__ = ["REQUEST_ID", "headers_of", "infer_path", "metadata_value", "model_of", "request_id_of"]

REQUEST_ID = "x-request-id"
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,128}")


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
        if value:
            return checked_id(value) if isinstance(value, str) else (new_request_id(), True)
    return new_request_id(), False


def headers_of(metadata: Iterable[tuple[str, str | bytes]]) -> Headers:
    """Text metadata as the headers a guard reads (`X-Group` is metadata `x-group`)."""
    return Headers([(k.encode(), v.encode()) for k, v in metadata if isinstance(v, str)])


def model_of(policy: CompiledPolicy, name: str, version: str) -> CompiledModel | None:
    """The model that guards an OIP call: declared by name, else the one whose routes the
    equivalent HTTP path matches (so `/v2/models/*/infer` covers gRPC calls as well)."""
    model = policy.model(name)
    if model is None:
        path = infer_path(name, version)
        model = policy.match(path) if path is not None else None
    return model


def infer_path(name: str, version: str) -> str | None:
    """The HTTP path of an OIP inference of this model and version; None when either is not
    one plain path segment."""
    if not _SEGMENT.fullmatch(name):
        return None
    if not version:
        return f"/v2/models/{name}/infer"
    return f"/v2/models/{name}/versions/{version}/infer" if _SEGMENT.fullmatch(version) else None
