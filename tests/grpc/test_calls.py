"""What the policy hook reads from a call: request id, metadata, and which model guards it."""

from __future__ import annotations

from typing import Any

import pytest

from guardproxy.grpc import InferCall
from guardproxy.grpc.calls import headers_of, model_of, request_id_of
from guardproxy.policy.models import Policy
from guardproxy.policy.table import compile_policy


def call(method: str = "ModelInfer", doc_id: str = "", metadata: Any = ()) -> InferCall:
    request = {"id": doc_id} if doc_id else {}
    return InferCall(method, "m", "", request, tuple(metadata), "peer")


@pytest.mark.parametrize(
    ("method", "doc_id", "metadata", "expected", "replaced"),
    [
        ("ModelInfer", "doc", [("x-request-id", "meta")], "meta", False),
        ("ModelInfer", "doc", [], "doc", False),
        ("ModelStreamInfer", "doc", [("x-request-id", "meta")], "doc", False),  # per message
        ("ModelInfer", "", [("x-request-id", "a" * 128)], "a" * 128, False),
        ("ModelInfer", "doc", [("x-request-id", "a" * 129)], None, True),
        ("ModelInfer", "", [("x-request-id", "x y")], None, True),
        ("ModelInfer", "", [("x-request-id-bin", b"\x00")], None, False),
    ],
)
def test_request_ids(
    method: str, doc_id: str, metadata: Any, expected: str | None, replaced: bool
) -> None:
    found, was_replaced = request_id_of(call(method, doc_id, metadata))
    assert was_replaced is replaced
    if expected is None:
        assert len(found) == 32 and int(found, 16) >= 0  # a new one
    else:
        assert found == expected


def test_headers_are_the_text_metadata() -> None:
    headers = headers_of([("x-group", "a"), ("trace-bin", b"\x01")])
    assert headers.get(b"X-Group") == b"a"
    assert b"trace-bin" not in headers


def test_a_model_is_found_by_name_else_by_its_routes() -> None:
    wildcard = {"name": "any", "routes": ["/v2/models/*/versions/*/infer", "/v2/models/*/infer"]}
    models = [{"name": "adult"}, wildcard]
    policy = compile_policy(Policy.model_validate({"region": "default", "models": models}))
    assert model_of(policy, "adult", "").name == "adult"  # type: ignore[union-attr]
    assert model_of(policy, "fraud", "").name == "any"  # type: ignore[union-attr]
    assert model_of(policy, "fraud", "2").name == "any"  # type: ignore[union-attr]
    assert model_of(policy, "a/b", "") is None  # not a path segment: the name alone decides
    assert model_of(policy, "fraud", "x/../y") is None
