"""A streaming upstream call whose requests the proxy writes itself, keeping the upstream's status.

grpc.aio writes a call's requests (from a request iterator, or `write()`) so that a write
failing because the upstream has already ended the call replaces the call's status with
INTERNAL "Internal error from Core": whenever the event loop handles the failed write after
the status the upstream sent, that status is lost. A proxy writes while the upstream answers
early all the time (an unknown method, a refusal before every request was read), so the
relay writes through the call's core object instead and, when a write fails, stops: the
upstream ended the call, and the status the call reports is the one it sent. A call without
one (a channel with interceptors) is written through `write()` as grpc.aio would.
(grpc/grpc#36066; once a grpcio release keeps the status, the requests can go back to it.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from grpc import aio

from .hooks import Metadata

__all__ = ["Relay"]

log = logging.getLogger("guardproxy.grpc")


class Relay:
    """A stream-stream upstream call and the task that writes the client's requests to it."""

    def __init__(
        self,
        channel: aio.Channel,
        method: str,
        requests: AsyncIterator[bytes],
        metadata: Metadata,
        timeout: float | None,
    ) -> None:
        streams: aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(method)
        # No request iterator: the call's own writer is what loses the upstream's status.
        self.call: aio.StreamStreamCall[bytes, bytes] = streams(metadata=metadata, timeout=timeout)
        self._writer = asyncio.ensure_future(self._write(requests))

    async def _write(self, requests: AsyncIterator[bytes]) -> None:
        """Send each request, then half-close; stop when the call has ended."""
        call = self.call
        core = getattr(call, "_cython_call", None)  # sends without touching the call's status
        send = call.write if core is None else core.send_serialized_message
        half_close = call.done_writing if core is None else core.send_receive_close
        try:
            await call.wait_for_connection()  # the call's headers are out (raises if it ended)
            async for request in requests:
                if call.done():
                    return
                await send(request)
            if not call.done():
                await half_close()
        except (aio.AioRpcError, aio.InternalError):
            return  # the upstream ended the call; its status is the one the call reports
        except Exception as exc:  # the client's requests broke off: so does the upstream call
            log.debug("the client's requests broke off: %r", exc)
            call.cancel()

    def close(self) -> None:
        """Stop reading the client's requests; cancel the upstream call if it still runs."""
        self._writer.cancel()
        self.call.cancel()
