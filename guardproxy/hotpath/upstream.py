"""Forwarding to the model server: a keep-alive pool per origin, timeouts, header rules."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from guardproxy.masking import mask_url
from guardproxy.transport import HeaderList, Headers, Pool, PoolConfig, Request, UpstreamError

__all__ = [
    "HOP_BY_HOP",
    "Limits",
    "Timeouts",
    "Upstream",
    "UpstreamError",
    "client_message",
    "forward_request_headers",
    "forward_response_headers",
]

# RFC 9110 section 7.6.1: these describe one connection, never the message. Expect is
# answered here (the body is read or streamed), and Host is the upstream's.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Request headers never forwarded as the client sent them (replaced or framed anew).
REQUEST_SKIP = HOP_BY_HOP | {b"host", b"x-request-id", b"x-forwarded-for", b"expect"}
_RESPONSE_SKIP = HOP_BY_HOP
# Sent by clients to describe earlier hops; only a trusted front proxy may set them.
_FORWARDED = frozenset({b"forwarded", b"x-real-ip"})
_FORWARDED_PREFIX = b"x-forwarded-"
# What a client is told of an upstream failure, by the transport's kind; any other kind keeps
# the transport's own message, also fixed text (no address, header or body in it).
_MESSAGES = {
    "refused": "upstream unreachable",
    "timeout_connect": "upstream timed out",
    "timeout_read": "upstream timed out",
    "timeout_total": "upstream timed out",
    "closed": "upstream closed the connection",
    "reset": "upstream closed the connection",
}


def client_message(error: UpstreamError) -> str:
    """The fixed text a client gets for an upstream failure (the detail is for the log)."""
    return _MESSAGES.get(error.kind) or error.message


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts in seconds (None: no limit)."""

    connect: float | None = 5.0
    read: float | None = 60.0
    total: float | None = 300.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Concurrency per pool key (one per model, one for unguarded traffic)."""

    per_key: int = 64  # requests running at once
    queue: int = 256  # requests waiting for a slot; more are answered 503
    queue_timeout: float = 10.0  # longest wait for a slot; then 503


def pool_config(timeouts: Timeouts, limits: Limits) -> PoolConfig:
    """The transport pool's settings for these timeouts and limits."""
    return PoolConfig(
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
        total_timeout=timeouts.total,
        per_key=limits.per_key,
        queue_per_key=limits.queue,
        queue_timeout=limits.queue_timeout,
        max_idle=max(64, limits.per_key),
    )


class Upstream:
    """A keep-alive pool to one model server (or its fallback): `http://[user:pw@]host[:port]`.

    Credentials in the URL go to the upstream as Basic authorization (replacing a client's
    Authorization header); `display` is the URL with them masked, for /status and logs.
    """

    def __init__(
        self, url: str, timeouts: Timeouts | None = None, limits: Limits | None = None
    ) -> None:
        parts = urlsplit(url)
        self.display = mask_url(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream {self.display!r}: expected http://HOST[:PORT][/PREFIX]")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = f"{host}:{self.port}"  # the Host header the pool sends
        self.prefix = parts.path.rstrip("/").encode("latin-1")
        self.authorization = _basic(parts.username, parts.password)
        self.timeouts = timeouts or Timeouts()
        self.limits = limits or Limits()
        self.pool = Pool(self.host, self.port, pool_config(self.timeouts, self.limits))

    def target(self, raw: bytes) -> bytes:
        """The upstream request target for a client's raw path and query string, unchanged
        (`*`, OPTIONS about the server as a whole, without the URL's path)."""
        return self.prefix + raw if self.prefix and raw != b"*" else raw

    def authorize(self, headers: HeaderList) -> None:
        """Put the URL's credentials in the headers (call only when `authorization` is set)."""
        headers[:] = [(k, v) for k, v in headers if k.lower() != b"authorization"]
        headers.append((b"Authorization", self.authorization or b""))

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.pool.close()

    def status(self) -> dict[str, Any]:
        """The pool's counters, and requests active and waiting per key."""
        return self.pool.status()

    async def reachable(self, wait: float = 1.0) -> bool:
        """Whether a TCP connection to the upstream opens (readiness, never the hot path)."""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), wait)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True


def _basic(user: str | None, password: str | None) -> bytes | None:
    if user is None:
        return None
    pair = f"{unquote(user)}:{unquote(password or '')}".encode()
    return b"Basic " + base64.b64encode(pair)


def connection_tokens(values: list[bytes]) -> frozenset[bytes]:
    """The header names a Connection header lists (lower-cased)."""
    return frozenset(
        token.strip().lower() for value in values for token in value.split(b",") if token.strip()
    )


def forward_request_headers(
    request: Request,
    request_id: bytes,
    trust_forwarded: bool = False,
    skip: frozenset[bytes] = REQUEST_SKIP,
) -> HeaderList:
    """The client's headers minus hop-by-hop ones (and `skip`), Host dropped, X-Forwarded-* set.

    Unless the front proxy is trusted, a client's own Forwarded / X-Forwarded-* / X-Real-Ip
    headers are dropped and replaced with what this hop saw: the upstream is never told a
    false peer.
    """
    out: HeaderList = []
    prior: bytes | None = None
    named: list[bytes] | None = None
    has_proto = has_host = False
    host = b""
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower in skip:
            if lower == b"connection":
                named = [*named, value] if named else [value]
            elif lower == b"x-forwarded-for":
                prior = value if prior is None else prior + b", " + value
            elif lower == b"host":
                host = value
            continue
        if lower.startswith(_FORWARDED_PREFIX) or lower in _FORWARDED:
            if not trust_forwarded:
                continue
            has_proto = has_proto or lower == b"x-forwarded-proto"
            has_host = has_host or lower == b"x-forwarded-host"
        out.append((name, value))
    if named:
        drop = connection_tokens(named)
        out = [(k, v) for k, v in out if k.lower() not in drop]
    out.append((b"X-Request-Id", request_id))
    out.extend(forwarding(request, prior if trust_forwarded else None, host, has_proto, has_host))
    return out


def forwarding(
    request: Request, prior: bytes | None, host: bytes, has_proto: bool, has_host: bool
) -> HeaderList:
    """X-Forwarded-For (the peer appended to a trusted chain), -Proto and -Host unless kept."""
    peer = request.peer[0].encode("latin-1") if request.peer else b""
    added: HeaderList = [(b"X-Forwarded-For", prior + b", " + peer if prior else peer)]
    if not has_proto:
        added.append((b"X-Forwarded-Proto", b"http"))
    if not has_host and host:
        added.append((b"X-Forwarded-Host", host))
    return added


def forward_response_headers(headers: Headers) -> HeaderList:
    """The upstream's headers minus hop-by-hop ones (framing is redone by our server)."""
    raw = headers.raw
    out = []
    for pair in raw:  # a loop: cheaper than a list comprehension for a few headers
        if pair[0].lower() not in _RESPONSE_SKIP:
            out.append(pair)
    if len(out) != len(raw) and b"connection" in headers:
        drop = connection_tokens(headers.getall(b"connection"))
        if drop:
            out = [(k, v) for k, v in out if k.lower() not in drop]
    return out
