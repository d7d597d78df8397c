"""SERVER and CLIENT spans and HTTP metrics around each proxied request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from time import perf_counter
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from guardproxy.hotpath.hooks import UpstreamCall
from guardproxy.telemetry.instruments import NO_ROUTE, Instruments

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
PROPAGATOR = TraceContextTextMapPropagator()


class RequestState:
    """What one request's spans and metrics accumulate while it is handled."""

    __slots__ = ("route", "span", "upstream_seconds")

    def __init__(self, span: Span | None) -> None:
        self.span = span
        self.route = ""
        self.upstream_seconds = 0.0


CURRENT: ContextVar[RequestState | None] = ContextVar("guardproxy_request", default=None)


def method_of(method: str) -> str:
    """The method as semconv records it: known methods, else _OTHER (bounded)."""
    return method if method in METHODS else "_OTHER"


def traceparent(span: Span) -> str | None:
    """The W3C traceparent naming this span as the parent."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


class UpstreamSpan:
    """One upstream call: a CLIENT span (when tracing) and the client duration histogram."""

    __slots__ = ("method", "owner", "span", "started", "state")

    def __init__(
        self, owner: RequestTracer, state: RequestState | None, span: Span | None, method: str
    ) -> None:
        self.owner, self.state, self.span, self.method = owner, state, span, method
        self.started = perf_counter()

    def end(self, status: int, error_type: str | None = None) -> None:
        """Record the call's duration and close its span."""
        seconds = perf_counter() - self.started
        if self.state is not None:
            self.state.upstream_seconds += seconds
        self.owner.instruments.client.record_key((self.method, error_type or status), seconds)
        span = self.span
        if span is not None:  # only recording spans are kept
            if error_type is None:
                span.set_attribute("http.response.status_code", status)
            _mark_error(span, status, error_type)
            span.end()


class RequestTracer:
    """Implements the proxy's UpstreamTracer and wraps the data port's handler."""

    def __init__(
        self,
        tracer: Tracer | None,
        instruments: Instruments,
        upstream: str,
        sampler_reads_attributes: bool = True,
    ) -> None:
        self.tracer = tracer
        self.instruments = instruments
        # The SDK's own samplers never look at attributes: then they are built only for
        # spans that record, so an unsampled request builds no attribute dict.
        self.sampler_reads_attributes = sampler_reads_attributes
        parts = urlsplit(upstream)
        # Host and port only: a span never carries the URL's credentials.
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        self.upstream_base = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
        self.client_static: dict[str, str | int] = {
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        }

    def traced(self, handler: Handler) -> Handler:
        """The handler inside a SERVER span, timed into http.server.request.duration."""

        async def handle(request: web.Request) -> web.StreamResponse:
            started = perf_counter()
            state = RequestState(self._server_span(request) if self.tracer else None)
            token = CURRENT.set(state)
            status, error = 500, None
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            except BaseException as exc:
                error = type(exc).__name__
                raise
            finally:
                CURRENT.reset(token)
                self._finish(request.method, state, perf_counter() - started, status, error)

        return handle

    def _server_span(self, request: web.Request) -> Span:
        assert self.tracer is not None
        headers = request.headers
        parent = PROPAGATOR.extract(headers) if "traceparent" in headers else None
        if self.sampler_reads_attributes:
            attributes = self._server_attributes(request)
            return self.tracer.start_span(
                request.method, context=parent, kind=SpanKind.SERVER, attributes=attributes
            )
        span = self.tracer.start_span(request.method, context=parent, kind=SpanKind.SERVER)
        if span.is_recording():
            span.set_attributes(self._server_attributes(request))
        return span

    def _server_attributes(self, request: web.Request) -> dict[str, str | int]:
        host, _, port = request.host.rpartition(":")
        attributes: dict[str, str | int] = {
            "http.request.method": method_of(request.method),
            "url.path": request.path,
            "url.scheme": request.scheme,
            "server.address": host or request.host,
        }
        if port.isdigit():
            attributes["server.port"] = int(port)
        return attributes

    def _finish(
        self, method: str, state: RequestState, seconds: float, status: int, error: str | None
    ) -> None:
        key = (method_of(method), error or status, state.route or NO_ROUTE)
        self.instruments.server.record_key(key, seconds)
        self.instruments.overhead.record_key(key, max(0.0, seconds - state.upstream_seconds))
        span = state.span
        if span is not None and span.is_recording():
            span.set_attribute("http.response.status_code", status)
            _mark_error(span, status, error)
            span.end()

    def upstream_call(self, request: web.Request, headers: CIMultiDict[str]) -> UpstreamCall:
        """Start a CLIENT span under the request's SERVER span; send its traceparent upstream."""
        state = CURRENT.get()
        method = method_of(request.method)
        server = state.span if state is not None else None
        if server is None or self.tracer is None:
            return UpstreamSpan(self, state, None, method)
        if not server.is_recording():
            # Unsampled: no CLIENT span (its parent's decision stands), the decision goes on.
            _propagate(headers, server)
            return UpstreamSpan(self, state, None, method)
        span = self.tracer.start_span(
            request.method,
            context=set_span_in_context(server),
            kind=SpanKind.CLIENT,
            attributes={
                **self.client_static,
                "http.request.method": method,
                "url.full": self.upstream_base + request.path,
            },
        )
        _propagate(headers, span)
        return UpstreamSpan(self, state, span, method)


def _propagate(headers: CIMultiDict[str], span: Span) -> None:
    value = traceparent(span)
    if value is not None:
        headers["traceparent"] = value


def _mark_error(span: Span, status: int, error: str | None) -> None:
    if error is not None:
        span.set_attribute("error.type", error)
        span.set_status(StatusCode.ERROR, error)
    elif status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(StatusCode.ERROR)
