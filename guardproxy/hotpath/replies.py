"""What the proxy answers itself: JSON errors naming the request, and the X-Guard-* headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from guardproxy.breaker.state import CircuitBreaker
from guardproxy.guards.exchange import Exchange, dumps
from guardproxy.hotpath.upstream import forward_response_headers
from guardproxy.policy.table import CompiledModel


class Refusal(Exception):
    """A request the proxy answers itself before the upstream sees it (400, 413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class ProxyCounts:
    """Plain counters the admin port reports; ints, so no locks in a single event loop."""

    requests: int = 0
    guarded: int = 0
    unguarded: int = 0
    in_flight: int = 0
    unknown_region: int = 0
    upstream_errors: dict[int, int] = field(default_factory=dict)
    refused: dict[int, int] = field(default_factory=dict)
    aborted: int = 0
    blocked: int = 0
    unguarded_streams: int = 0
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
            "in_flight": self.in_flight,
            "unknown_region": self.unknown_region,
            "upstream_errors": {str(k): v for k, v in self.upstream_errors.items()},
            "refused": {str(k): v for k, v in self.refused.items()},
            "aborted": self.aborted,
            "blocked": self.blocked,
            "unguarded_streams": self.unguarded_streams,
            "request_ids_replaced": self.request_ids_replaced,
            "internal_errors": self.internal_errors,
            "client_gone": self.client_gone,
            "observer_errors": dict(self.observer_errors),
        }


def error_response(status: int, message: str, request_id: str, **extra: Any) -> web.Response:
    """Every error the proxy itself gives: a JSON body naming the request."""
    body = {"error": message, "request_id": request_id, **extra}
    return web.Response(
        status=status,
        body=dumps(body),
        content_type="application/json",
        headers={"X-Request-Id": request_id},
    )


def breaker_open(request_id: str, model: CompiledModel, breaker: CircuitBreaker) -> web.Response:
    """503 while the breaker is open (reject, or a fallback that is not ready)."""
    response = error_response(
        503,
        "circuit breaker open",
        request_id,
        region=model.region,
        model=model.name,
        reason=breaker.reason,
    )
    response.headers["Retry-After"] = str(breaker.retry_after())
    response.headers["X-Guard-Breaker"] = breaker.state_name
    response.headers["X-Guard-Region"] = model.region
    response.headers["X-Guard-Model"] = model.name
    response.headers["X-Guard-Policy"] = model.policy_version
    return response


def annotate(headers: CIMultiDict[str] | Any, ex: Exchange, model: CompiledModel) -> None:
    """The X-Guard-* headers of a guarded answer."""
    headers["X-Request-Id"] = ex.request_id
    headers["X-Guard-Region"] = model.region
    headers["X-Guard-Model"] = model.name
    headers["X-Guard-Policy"] = model.policy_version
    headers.update(ex.annotations)


def relay_headers(upstream: Any, request_id: str) -> CIMultiDict[str]:
    """An upstream answer's headers for the client, framing left to content_length."""
    headers = forward_response_headers(upstream)
    headers.popall("Content-Length", None)
    headers["X-Request-Id"] = request_id
    return headers
