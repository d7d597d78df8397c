"""Guarded bodies: decoded before the guards read them, so the upstream gets what was checked."""

from __future__ import annotations

from guardproxy.guards.exchange import Exchange
from guardproxy.hotpath.encoding import ENCODED_ONLY, EncodingError, codings, decode_body
from guardproxy.hotpath.replies import Refusal
from guardproxy.hotpath.upstream import (
    REQUEST_SKIP,
    forward_request_headers,
    forward_response_headers,
)
from guardproxy.payloads.binary_bodies import HEADER_KEY, BinaryBodies, BinaryReads
from guardproxy.transport import (
    BodyTooLarge,
    HeaderList,
    Headers,
    Request,
    UpstreamError,
    UpstreamResponse,
)

IDENTITY = (b"Accept-Encoding", b"identity")
BINARY_HEADER = b"Inference-Header-Content-Length"
# A changed answer is framed anew: its encoding is gone, a binary one has a new JSON header.
_CHANGED_SKIP = frozenset({b"content-encoding", HEADER_KEY})
# A guarded stream may end early (a denied term): the upstream's length no longer holds.
_STREAM_SKIP = frozenset({b"content-length"})
# A guarded request's own Accept-Encoding is replaced: guards read the answer, and an encoded
# one they cannot. Once its body is decoded, the headers describing the encoding go too.
_GUARDED_SKIP = REQUEST_SKIP | {b"accept-encoding"}
_DECODED_SKIP = _GUARDED_SKIP | {name.lower().encode() for name in ENCODED_ONLY}
BUDGET_FULL = "too many bodies held by the proxy; retry later"
BOM, JSON_STARTS = b"\xef\xbb\xbf", b'{[ \t\r\n"'
RETRY_AFTER = (b"Retry-After", b"1")
# Of each body, what the budget does not count: as much as the transport buffers for any
# connection anyway. Clients who fill the budget with large bodies then hold up only other
# large bodies, never the usual small request.
UNCOUNTED = 64 * 1024


class BodyBudget:
    """Bytes of guarded bodies the process holds at once (--max-buffered): requests as they
    arrive, answers once read, both until the client has read the answer.

    Plain ints: one event loop changes them, so no locks; every step is O(1).
    """

    __slots__ = ("limit", "peak", "refused", "reserved")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reserved = 0  # bytes held by exchanges in progress
        self.peak = 0
        self.refused = 0  # requests answered 503 because their body did not fit

    def status(self) -> dict[str, int]:
        """JSON-able view for /status."""
        return {
            "budget": self.limit,
            "reserved": self.reserved,
            "peak": self.peak,
            "refused": self.refused,
        }


class BudgetFull(Refusal):
    """503: a body does not fit in what is left of the process's budget."""

    def __init__(self) -> None:
        super().__init__(503, BUDGET_FULL, [RETRY_AFTER])


class BodyHold:
    """What one guarded exchange holds of the budget; released once, when the exchange ends."""

    __slots__ = ("budget", "held", "size")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0  # bytes of the body held in memory
        self.held = 0  # of them, those the budget counts: past the first UNCOUNTED

    def grow(self, size: int) -> None:
        """The body holds `size` more bytes; BudgetFull (503) when they do not fit."""
        self.size += size
        more = self.size - UNCOUNTED - self.held
        if more <= 0:
            return
        budget = self.budget
        reserved = budget.reserved + more
        if reserved > budget.limit:
            budget.refused += 1
            raise BudgetFull()
        budget.reserved = reserved
        self.held += more
        if reserved > budget.peak:
            budget.peak = reserved

    def release(self) -> None:
        """Give everything held back (again: nothing)."""
        self.budget.reserved -= self.held
        self.held = 0


def applied_codings(headers: Headers) -> list[str]:
    """The content codings a message's Content-Encoding headers name (none: empty)."""
    values = headers.getall(b"content-encoding")
    return codings(value.decode("latin-1") for value in values) if values else []


async def read_request_body(request: Request, limit: int, hold: BodyHold) -> tuple[bytes, bool]:
    """The request body decoded from its Content-Encoding; True when it was encoded.

    BodyTooLarge (413) over the limit as sent; Refusal 413 when the decoded body is over it,
    415 for an unknown coding, 400 when the bytes do not match their coding. The bytes are
    held in the budget as they arrive (BudgetFull, 503, once they do not fit), a decoded
    body at its decoded size.
    """
    if request.body.done:  # the usual small body, arrived with its head: held already
        raw = await request.read(limit)
        hold.grow(len(raw))
    else:
        raw = await _read_held(request, limit, hold)
    applied = applied_codings(request.headers)
    if not applied:
        return _utf8(raw), False
    try:
        body = decode_body(raw, applied, limit)
    except EncodingError as exc:
        raise Refusal(exc.status, exc.message) from None
    if len(body) > hold.size:
        hold.grow(len(body) - hold.size)
    return _utf8(body), True


def _utf8(body: bytes) -> bytes:
    """The body, unless it is JSON in another encoding than UTF-8 (400).

    The guards read UTF-8 only, as RFC 8259 asks; Python's json.loads, behind many model
    servers, also reads a byte order mark and UTF-16 or UTF-32. The guards would find no
    group where the model reads one: its client would choose the "other" group's threshold.
    """
    head = body[:4]
    if b"\x00" in head or (head.startswith(BOM) and head[3:4] in JSON_STARTS):
        raise Refusal(400, "a guarded request body must be UTF-8 JSON without a byte order mark")
    return body


async def _read_held(request: Request, limit: int, hold: BodyHold) -> bytes:
    """The body as sent (still arriving), each piece held in the budget as it arrives.

    Never reserved ahead from a declared length: clients could then hold the whole budget
    with heads alone. To hold it, they must send the bytes.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    parts: list[bytes] = []
    size = 0
    async for data in request.stream():  # each piece: all that arrived since the last
        size += len(data)
        if size > limit:
            raise BodyTooLarge(limit)
        hold.grow(len(data))
        parts.append(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def guarded_headers(
    request: Request, request_id: bytes, trust_forwarded: bool, decoded: bool
) -> HeaderList:
    """The headers sent upstream with a guarded request's (decoded) body."""
    skip = _DECODED_SKIP if decoded else _GUARDED_SKIP
    headers = forward_request_headers(request, request_id, trust_forwarded, skip)
    headers.append(IDENTITY)
    return headers


async def read_answer(
    ex: Exchange, response: UpstreamResponse, limit: int, media_type: bytes, hold: BodyHold
) -> None:
    """The upstream's answer into the exchange, decoded if it came encoded all the same, and
    held in the budget (BudgetFull, 503, when it does not fit)."""
    body = await response.read(limit)
    hold.grow(len(body))
    ex.status = response.status
    ex.response_type = media_type
    headers = forward_response_headers(response.headers)
    applied = applied_codings(response.headers)
    if applied:
        try:
            body = decode_body(body, applied, limit)
        except EncodingError:
            raise UpstreamError(502, "encoding", "upstream answer could not be decoded") from None
        headers = [(k, v) for k, v in headers if k.lower() != b"content-encoding"]
        hold.grow(len(body))
    ex.response_headers = headers
    ex.response_body = body


def changed_headers(headers: HeaderList, binary: BinaryBodies | None) -> HeaderList:
    """A changed answer's headers: no Content-Encoding; a binary one's new header length."""
    out = [(k, v) for k, v in headers if k.lower() not in _CHANGED_SKIP]
    if binary is not None and binary.encoded is not None:
        out.append((BINARY_HEADER, b"%d" % binary.encoded.header_length))
    return out


def stream_headers(headers: Headers) -> HeaderList:
    """A guarded stream's headers: the upstream's, without its Content-Length."""
    return [(k, v) for k, v in forward_response_headers(headers) if k.lower() not in _STREAM_SKIP]


def binary_request(request: Request, reads: BinaryReads, value: bytes) -> BinaryBodies:
    """A binary tensor request's state; 400 when its header length is not one plain number.

    Two values, or one a lenient server reads as a number ("120, 100", "+120"), could split
    the body one way for the guards and another for the model.
    """
    if not (value.isdigit() and len(value) <= 12):
        raise Refusal(400, "Inference-Header-Content-Length is not a byte count")
    if len(request.headers.getall(HEADER_KEY)) > 1:
        raise Refusal(400, "Inference-Header-Content-Length given more than once")
    return BinaryBodies(reads, value.decode("latin-1"))
