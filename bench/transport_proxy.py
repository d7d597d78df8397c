"""The smallest pass-through on guardproxy.transport: read the body, forward, answer."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from urllib.parse import urlsplit

from guardproxy.transport import Handler, Pool, Request, ResponseWriter, Server, UpstreamError

SKIP = frozenset({b"host", b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})


def make_handler(pool: Pool) -> Handler:
    """Read the whole body, send it upstream on a pooled connection, return the answer."""

    async def forward(request: Request, response: ResponseWriter) -> None:
        body = await request.read()
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in SKIP]
        try:
            upstream = await pool.request(request.method, request.target, headers, body)
            payload = await upstream.read()
        except UpstreamError as exc:
            response.send(exc.status, [(b"content-type", b"text/plain")], exc.message.encode())
            return
        kept = [(k, v) for k, v in upstream.headers.raw if k.lower() not in SKIP]
        response.send(upstream.status, kept, payload)

    return forward


async def serve(upstream: str, port: int) -> None:
    """Serve until cancelled."""
    url = urlsplit(upstream)
    pool = Pool(url.hostname or "127.0.0.1", url.port or 80)
    server = Server(make_handler(pool))
    await server.start("127.0.0.1", port)
    try:
        await asyncio.Event().wait()
    finally:
        await server.shutdown(1.0)
        await pool.close()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m bench.transport_proxy --upstream URL --port P` (uvloop when installed)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--upstream", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        asyncio.run(serve(args.upstream, args.port))
        return
    uvloop.run(serve(args.upstream, args.port))


if __name__ == "__main__":
    main()
