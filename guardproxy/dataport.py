"""The data port: the reserved /guardproxy/ prefix answered here, everything else proxied."""

from __future__ import annotations

from collections.abc import Awaitable

from guardproxy.hotpath.paths import origin_form
from guardproxy.hotpath.replies import proxy_error, send_error
from guardproxy.hotpath.trust import request_id_of
from guardproxy.settings import Settings
from guardproxy.transport import Handler, Request, ResponseWriter, Server, ServerConfig

RESERVED = b"/guardproxy/"
FEEDBACK = b"/guardproxy/v1/feedback"


class DataPort:
    """Routes each request: feedback, another reserved path (404), or the proxy."""

    def __init__(self, proxy: Handler, feedback: Handler) -> None:
        self.proxy = proxy
        self.feedback = feedback

    def handle(self, request: Request, writer: ResponseWriter) -> Awaitable[None]:
        """The server's handler: the chosen handler's own coroutine, one await level less."""
        target = request.target
        if not target.startswith(RESERVED):
            if target.startswith(b"/"):
                return self.proxy(request, writer)
            target = origin_form(target.decode("latin-1")).encode("latin-1")
            if not target.startswith(RESERVED):
                return self.proxy(request, writer)
        path = target.partition(b"?")[0]
        if path == FEEDBACK and request.method == b"POST":
            return self.feedback(request, writer)
        return self._unknown(request, writer)

    async def _unknown(self, request: Request, writer: ResponseWriter) -> None:
        raw = request.headers.get(b"x-request-id")
        request_id, _ = request_id_of(raw.decode("latin-1") if raw is not None else None)
        send_error(writer, 404, "no such endpoint under /guardproxy/", request_id)


def _shared_out(limit: int, workers: int) -> int | None:
    """Each worker's part of a connection limit (at least one); None for 0, no limit."""
    return max(1, limit // workers) if limit else None


def data_server(handler: Handler, settings: Settings) -> Server:
    """The transport server of the data port, with its slow-client timeouts.

    What the server answers by itself (431, 400, 408...) is JSON naming the request, as the
    proxy's own errors are.
    """
    config = ServerConfig(
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        body_min_rate=settings.body_min_rate,
        write_timeout=settings.write_timeout,
        max_connections=_shared_out(settings.max_connections, settings.workers),
        max_connections_per_client=_shared_out(
            settings.max_connections_per_client, settings.workers
        ),
    )
    return Server(handler, config, proxy_error)
