"""Pass-through: the client's body to the upstream and the answer back, byte for byte."""

from __future__ import annotations

import http
import logging

from guardproxy.hotpath.replies import REQUEST_ID, ProxyCounts
from guardproxy.hotpath.upstream import forward_response_headers
from guardproxy.transport import Body, Request, ResponseWriter, UpstreamError, UpstreamResponse

log = logging.getLogger("guardproxy.proxy")

BUFFER_UP_TO = 64 * 1024  # bodies up to this size are sent whole: one write, and replayable
NO_BODY_STATUS = frozenset({204, 304})
_PHRASES = {s.value: s.phrase.encode() for s in http.HTTPStatus}


async def request_body(request: Request) -> tuple[Body, int | None]:
    """The body to forward and its declared length: bytes when small or already here.

    Bytes go with their length and may be sent again on a fresh connection (the pool's retry
    rule); larger bodies stream with bounded memory, chunked unless their length is known.
    """
    length = request.content_length
    if length is None and b"transfer-encoding" not in request.headers:
        return None, None
    if request.body.done or (length is not None and length <= BUFFER_UP_TO):
        return await request.read(), None
    return request.stream(), length


def reason_of(response: UpstreamResponse) -> bytes | None:
    """The upstream's reason phrase when it is not the standard one (else the cached line)."""
    reason = response.reason
    return None if _PHRASES.get(response.status) == reason else reason


async def relay(
    request: Request,
    writer: ResponseWriter,
    response: UpstreamResponse,
    request_id: bytes,
    counts: ProxyCounts,
) -> None:
    """The upstream's answer to the client: whole when it is small, else as it arrives."""
    headers = forward_response_headers(response.headers)
    headers.append((REQUEST_ID, request_id))
    reason = reason_of(response)
    if response.complete or request.method == b"HEAD" or response.status in NO_BODY_STATUS:
        writer.send(response.status, headers, await response.read(), reason)
        return
    declared = response.headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) <= BUFFER_UP_TO:
        body = await response.read()  # a failure here still gets a JSON 502: nothing sent yet
        writer.send(response.status, headers, body, reason)
        return
    await stream(writer, response, headers, reason, counts)


async def stream(
    writer: ResponseWriter,
    response: UpstreamResponse,
    headers: list[tuple[bytes, bytes]],
    reason: bytes | None,
    counts: ProxyCounts,
) -> None:
    """Head first, then each piece of the body as the upstream sends it."""
    writer.start(response.status, headers, reason)
    try:
        async for chunk in response.stream():
            await writer.write(chunk)
    except UpstreamError as exc:
        # The head is gone: a reset tells the client the truth, a clean end would lie.
        counts.aborted += 1
        log.warning("upstream failed mid-response: %s", exc.kind)
        writer.abort()
        return
    finally:
        response.release()
    writer.end()
