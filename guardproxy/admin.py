"""The admin port: /healthz, /readyz, /status, and token-protected /admin/ operations."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from guardproxy.bearer import bearer_matches

if TYPE_CHECKING:
    from guardproxy.app import Runtime

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")


def build_admin_app(runtime: Runtime) -> web.Application:
    """The admin port: health, readiness, status, and token-protected operations."""
    app = web.Application()
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_get("/status/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/admin/reload", require_token(reload))
    app.router.add_post("/admin/breaker/{region}", require_token(breaker))
    return app


def require_token(handler: Handler) -> Handler:
    """Wrap a mutating endpoint: a bearer token must match GUARDPROXY_ADMIN_TOKEN."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        expected = request.app[RUNTIME].admin_token.current()
        if not bearer_matches(request.headers.get("Authorization"), expected):
            return web.json_response({"error": "a valid bearer token is required"}, status=401)
        return await handler(request)

    return guarded


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the upstreams accept connections and not draining; degraded parts listed."""
    runtime = request.app[RUNTIME]
    unready, degraded = runtime.problems()
    if not await runtime.upstream.reachable():
        unready.append(f"upstream {runtime.upstream.display} not reachable")
    if runtime.grpc is not None and not await runtime.grpc.reachable():
        unready.append(f"gRPC upstream {runtime.grpc.upstream} not reachable")
    if unready:
        body = {"status": "not ready", "problems": unready, "degraded": degraded}
        return web.json_response(body, status=503)
    if degraded:
        return web.json_response({"status": "degraded", "degraded": degraded})
    return web.json_response({"status": "ready"})


async def status(request: web.Request) -> web.Response:
    """Everything an operator wants to see, as JSON."""
    return web.json_response(request.app[RUNTIME].status())


async def models(request: web.Request) -> web.Response:
    """Every model ranked worst first, with the reasons (the fleet view), secrets masked."""
    runtime = request.app[RUNTIME]
    return web.json_response(runtime.masker().document(runtime.fleet.status()))


async def metrics(request: web.Request) -> web.Response:
    """Every metric in the Prometheus text format, or OpenMetrics when the scraper prefers it."""
    accept = request.headers.get("Accept", "")
    body, content_type = await request.app[RUNTIME].telemetry.scrape(accept)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def reload(request: web.Request) -> web.Response:
    """Reload the policy directory now; a broken policy keeps the last good table serving."""
    outcome = await request.app[RUNTIME].watcher.check(force=True)
    body = {"status": outcome.status, "problems": list(outcome.problems)}
    return web.json_response(body, status=422 if outcome.status == "failed" else 200)


async def breaker(request: web.Request) -> web.Response:
    """Force a region's breakers, or one model's with ?model=NAME: {"state": ..., "reason": ...}."""
    region = request.match_info["region"]
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "the body must be a JSON object"}, status=400)
    if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
        return web.json_response({"error": "expected {state, reason}"}, status=400)
    try:
        result = request.app[RUNTIME].breakers.force(
            region, str(body.get("state")), body.get("reason", ""), request.query.get("model")
        )
    except KeyError as exc:
        return web.json_response({"error": str(exc.args[0])}, status=404)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(result)
