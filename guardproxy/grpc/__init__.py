"""The Open Inference Protocol over gRPC: a guarded proxy and its message documents.

Needs the `grpc` extra (`pip install 'guardproxy[grpc]'`).
"""

from __future__ import annotations

from .context import INFER, STREAM_INFER, forwardable
from .documents import apply_response, request_document, response_document
from .hooks import (
    Allow,
    AllowAll,
    Failure,
    InferCall,
    InferHook,
    Refuse,
    refusal_trailers,
    status_for,
)
from .proxy import GrpcProxy

__all__ = [
    "INFER",
    "STREAM_INFER",
    "Allow",
    "AllowAll",
    "Failure",
    "GrpcProxy",
    "InferCall",
    "InferHook",
    "Refuse",
    "apply_response",
    "forwardable",
    "refusal_trailers",
    "request_document",
    "response_document",
    "status_for",
]
