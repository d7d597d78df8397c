"""The data port: the reserved /guardproxy/ prefix answered here, everything else proxied."""

from __future__ import annotations

from collections.abc import Awaitable

from guardproxy.hotpath.replies import request_id_of, send_error
from guardproxy.hotpath.targets import origin_form
from guardproxy.transport import (
    Handler,
    Request,
    ResponseWriter,
    Server,
    ServerConfig,
    json_error,
)

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
            if target.startswith(b"/") or not origin_form(target).startswith(RESERVED):
                return self.proxy(request, writer)
            target = origin_form(target)
        path = target.partition(b"?")[0]
        if path == FEEDBACK and request.method == b"POST":
            return self.feedback(request, writer)
        return self._unknown(request, writer, path)

    async def _unknown(self, request: Request, writer: ResponseWriter, path: bytes) -> None:
        where = f"{request.method.decode('latin-1')} {path.decode('latin-1')}"
        send_error(writer, 404, f"no such endpoint: {where}", request_id_of(request))


def data_server(
    handler: Handler, header_timeout: float, body_timeout: float, max_head: int = 64 * 1024
) -> Server:
    """The transport server of the data port, with its slow-client timeouts."""
    config = ServerConfig(
        max_head_size=max_head, header_timeout=header_timeout, body_timeout=body_timeout
    )
    return Server(handler, config, json_error)
