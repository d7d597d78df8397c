"""Forwarding to the model server: one pooled session, timeouts, header rules, error mapping."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from guardproxy.masking import mask_url

# RFC 9110 section 7.6.1: these describe one connection, never the message.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authenticate",
        "Proxy-Authorization",
    )
)
# The client library would otherwise add these; a proxy forwards what the client sent.
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts in seconds (None: no limit)."""

    connect: float | None = 5.0
    read: float | None = 60.0
    total: float | None = 300.0


# Sent by clients to describe earlier hops; only a trusted front proxy may set them.
FORWARDED = frozenset({"forwarded", "x-real-ip"})
FORWARDED_PREFIX = "x-forwarded-"


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer: status is what the client gets.

    `message` is fixed text safe for any client; `detail` (exception text, addresses) is for
    the log only, after masking.
    """

    def __init__(self, status: int, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail or message


def connection_headers(headers: CIMultiDictProxy[str] | web.BaseRequest) -> frozenset[str]:
    """Hop-by-hop headers plus those the Connection header names."""
    source = headers.headers if isinstance(headers, web.BaseRequest) else headers
    named = {
        token.strip().lower()
        for value in source.getall("Connection", ())
        for token in value.split(",")
        if token.strip()
    }
    return HOP_BY_HOP | named if named else HOP_BY_HOP


def forward_request_headers(
    request: web.BaseRequest, request_id: str, trust_forwarded: bool = False
) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, Host dropped, X-Forwarded-* set.

    Unless the front proxy is trusted, a client's own Forwarded / X-Forwarded-* headers are
    dropped and replaced with what this hop saw, so the upstream cannot be told a false peer.
    """
    drop = connection_headers(request)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in drop or lower == "host" or lower == "x-request-id":
            continue
        if not trust_forwarded and (lower in FORWARDED or lower.startswith(FORWARDED_PREFIX)):
            continue
        out.add(name, value)
    out["X-Request-Id"] = request_id
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For") if trust_forwarded else None
    out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    out.setdefault("X-Forwarded-Proto", request.scheme)
    out.setdefault("X-Forwarded-Host", request.host)
    return out


def forward_response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's headers minus hop-by-hop ones (framing is redone by our server)."""
    drop = connection_headers(headers)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


class Upstream:
    """A keep-alive pool to one model server (or its fallback), created in the app lifecycle."""

    def __init__(self, base_url: str, timeouts: Timeouts, pool_size: int = 100) -> None:
        self.base = URL(base_url)
        self._prefix = str(self.base).rstrip("/")
        self.display = mask_url(base_url)  # what /status and logs may show
        self.timeouts = timeouts
        self.pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the pooled session."""
        connector = aiohttp.TCPConnector(
            limit=self.pool_size, keepalive_timeout=30, ttl_dns_cache=300
        )
        timeout = aiohttp.ClientTimeout(
            total=self.timeouts.total,
            sock_connect=self.timeouts.connect,
            sock_read=self.timeouts.read,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        """Close the pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open session (the app lifecycle guarantees it during serving)."""
        assert self._session is not None, "upstream session used before start()"
        return self._session

    def url_for(self, path_qs: str) -> URL:
        """The upstream URL for a client's raw path and query string, unchanged."""
        return URL(self._prefix + path_qs, encoded=True)

    async def reachable(self, wait: float = 1.0) -> bool:
        """Whether a TCP connection to the upstream opens (readiness, never the hot path)."""
        host, port = self.base.host or "127.0.0.1", self.base.port or 80
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True


def map_error(exc: BaseException) -> UpstreamError:
    """Translate a client-library failure into what the proxy answers (and what it logs)."""
    detail = mask_url(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamError(504, "upstream timed out", detail)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(502, "upstream unreachable", detail)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError(502, "upstream closed the connection", detail)
    return UpstreamError(502, "upstream error", detail)
