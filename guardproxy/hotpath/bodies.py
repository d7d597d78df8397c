"""Guarded bodies: decoded before the guards read them, so the upstream gets what was checked."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from guardproxy.guards.exchange import Exchange
from guardproxy.hotpath.encoding import ENCODED_ONLY, EncodingError, codings, decode_body
from guardproxy.hotpath.replies import Refusal
from guardproxy.hotpath.upstream import (
    UpstreamError,
    forward_request_headers,
    forward_response_headers,
    map_error,
)


async def read_request_body(request: web.Request, limit: int) -> tuple[bytes, bool]:
    """The request body decoded from its Content-Encoding; True when it was encoded.

    Refusal 413 over the limit (encoded or decoded), 415 for an unknown coding, 400 when the
    bytes do not match their coding.
    """
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise Refusal(413, exc.text or "request body too large") from None
    applied = codings(request.headers.getall("Content-Encoding", ()))
    if not applied:
        return raw, False
    try:
        return decode_body(raw, applied, limit), True
    except EncodingError as exc:
        raise Refusal(exc.status, exc.message) from None


def guarded_headers(
    request: web.Request, request_id: str, trust_forwarded: bool, decoded: bool
) -> CIMultiDict[str]:
    """The headers sent upstream with a guarded request's (decoded) body."""
    headers = forward_request_headers(request, request_id, trust_forwarded)
    if decoded:  # the upstream gets the decoded bytes: the headers must describe those
        for name in ENCODED_ONLY:
            headers.popall(name, None)
    # Guards read the answer: an encoded one would pass them unread.
    headers["Accept-Encoding"] = "identity"
    return headers


async def read_answer(ex: Exchange, response: aiohttp.ClientResponse, limit: int) -> None:
    """The upstream's answer into the exchange, decoded if it came encoded all the same."""
    body = await read_all(response)
    ex.status = response.status
    ex.response_headers = forward_response_headers(response.headers)
    applied = codings(response.headers.getall("Content-Encoding", ()))
    if applied:
        try:
            body = decode_body(body, applied, limit)
        except EncodingError as exc:
            raise UpstreamError(502, "upstream answer could not be decoded", exc.message) from None
        ex.response_headers.popall("Content-Encoding", None)
    ex.response_body = body


async def read_all(response: aiohttp.ClientResponse) -> bytes:
    """The whole answer body (UpstreamError when the upstream fails while sending it)."""
    try:
        return await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise map_error(exc) from exc
