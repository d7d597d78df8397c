"""The honest baseline for a Python proxy: aiohttp + uvloop, pooled session, read, forward."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web

from .upstream import new_loop

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)
SKIP = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "content-length"})


async def forward(request: web.Request) -> web.Response:
    """Read the body, send it upstream on a pooled connection, return the answer."""
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in SKIP}
    url = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].request(request.method, url, data=body, headers=headers) as up:
        payload = await up.read()
        kept = {k: v for k, v in up.headers.items() if k.lower() not in SKIP}
        return web.Response(status=up.status, body=payload, headers=kept)


def build_app(upstream: str) -> web.Application:
    """One catch-all route; the session lives as long as the app."""
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as s:
            app[SESSION] = s
            yield

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m bench.bare_proxy --upstream URL --port P`."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--upstream", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    web.run_app(build_app(args.upstream), host="127.0.0.1", port=args.port,
                access_log=None, print=None, loop=new_loop())  # fmt: skip


if __name__ == "__main__":
    main()
