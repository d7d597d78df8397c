"""Exchanges and policies built directly, for guard tests."""

from __future__ import annotations

import time
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from guardproxy.guards.base import GuardChain
from guardproxy.guards.chain import GuardContext, build_chain
from guardproxy.guards.exchange import Exchange, dumps
from guardproxy.policy.models import ModelPolicy


def exchange(
    request: Any,
    response: Any = None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    request_id: str = "req-1",
    region: str = "sg",
    raw_response: bytes | None = None,
) -> Exchange:
    """An exchange whose upstream answered `response` (JSON) or `raw_response`."""
    ex = Exchange(
        request_id=request_id,
        region=region,
        model="adult",
        method="POST",
        path="/v2/models/adult/infer",
        headers=CIMultiDictProxy(CIMultiDict(headers or {})),
        body=dumps(request),
        started=time.monotonic(),
    )
    ex.status = status
    ex.response_headers["Content-Type"] = "application/json"
    ex.response_body = raw_response if raw_response is not None else dumps(response)
    return ex


def policy(model: dict[str, Any] | None = None, **sections: Any) -> ModelPolicy:
    """Model "adult" of region sg with the given sections (`model`: protocol, score, routes)."""
    routes = {"routes": ["/**"]} if (model or {}).get("protocol") == "jsonpath" else {}
    return ModelPolicy.model_validate({"name": "adult", **routes, **(model or {}), **sections})


def chain(spec: ModelPolicy, ctx: GuardContext | None = None, version: str = "v1") -> GuardChain:
    """The guard chain of a model of region sg."""
    return build_chain("sg", spec, version, ctx or GuardContext())


def v2_request(*sexes: str) -> dict[str, Any]:
    """A KServe v2 request with one row per sex."""
    n = len(sexes)
    return {
        "inputs": [
            {"name": "age", "shape": [n], "datatype": "INT64", "data": [40] * n},
            {"name": "sex", "shape": [n], "datatype": "BYTES", "data": list(sexes)},
        ]
    }


def v2_answer(*scores: float) -> dict[str, Any]:
    """A KServe v2 answer with a score output and a predict output."""
    n = len(scores)
    return {
        "model_name": "adult",
        "outputs": [
            {"name": "score", "shape": [n], "datatype": "FP32", "data": list(scores)},
            {"name": "predict", "shape": [n], "datatype": "INT64", "data": [0] * n},
        ],
    }
