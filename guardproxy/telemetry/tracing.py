"""SERVER and CLIENT spans and HTTP metrics around each proxied request."""

from __future__ import annotations

from contextvars import ContextVar
from time import perf_counter
from urllib.parse import urlsplit

from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from guardproxy.hotpath.hooks import UpstreamCall
from guardproxy.telemetry.aggregate import Histograms
from guardproxy.telemetry.instruments import NO_ROUTE, Instruments
from guardproxy.transport import Handler, HeaderList, Headers, Request, ResponseWriter

METHODS = {
    m.encode(): m
    for m in ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
}
PROPAGATOR = TraceContextTextMapPropagator()


class HeaderGetter(Getter[Headers]):
    """Reads W3C trace context from the transport's byte headers."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        """Every value of a header, as text."""
        values = carrier.getall(key.encode("latin-1"))
        return [v.decode("latin-1") for v in values] if values else None

    def keys(self, carrier: Headers) -> list[str]:
        """Every header name, as text."""
        return [name.decode("latin-1") for name, _ in carrier]


GETTER = HeaderGetter()


class RequestState:
    """What one request's spans and metrics accumulate while it is handled.

    Without tracing it is also the UpstreamCall of the request's upstream call: one object
    less a request than an UpstreamSpan. A request makes one upstream call at a time.
    """

    __slots__ = ("call_method", "call_started", "client", "route", "span", "upstream_seconds")

    def __init__(self, span: Span | None) -> None:
        self.span = span
        self.route = ""
        self.upstream_seconds = 0.0

    def begin_call(self, client: Histograms, method: str) -> RequestState:
        """Time an upstream call without a span of its own; ended by `end`."""
        self.client, self.call_method, self.call_started = client, method, perf_counter()
        return self

    def end(self, status: int, error_type: str | None = None) -> None:
        """Record the call's duration (see UpstreamSpan.end)."""
        seconds = perf_counter() - self.call_started
        self.upstream_seconds += seconds
        self.client.record_key((self.call_method, error_type or status), seconds)


CURRENT: ContextVar[RequestState | None] = ContextVar("guardproxy_request", default=None)


OTHER_METHOD = "_OTHER"


def method_of(method: bytes) -> str:
    """The method as semconv records it: known methods, else _OTHER (bounded)."""
    return METHODS.get(method, OTHER_METHOD)


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

        async def handle(request: Request, writer: ResponseWriter) -> None:
            started = perf_counter()
            state = RequestState(self._server_span(request) if self.tracer else None)
            token = CURRENT.set(state)
            error = None
            try:
                await handler(request, writer)
            except BaseException as exc:
                error = type(exc).__name__
                raise
            finally:
                CURRENT.reset(token)
                status = writer.status or 500
                if writer.aborted and error is None:
                    error = "aborted"
                self._finish(request.method, state, perf_counter() - started, status, error)

        return handle

    def _server_span(self, request: Request) -> Span:
        assert self.tracer is not None
        headers = request.headers
        parent = PROPAGATOR.extract(headers, getter=GETTER) if b"traceparent" in headers else None
        name = method_of(request.method)
        if self.sampler_reads_attributes:
            attributes = self._server_attributes(request)
            return self.tracer.start_span(
                name, context=parent, kind=SpanKind.SERVER, attributes=attributes
            )
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER)
        if span.is_recording():
            span.set_attributes(self._server_attributes(request))
        return span

    def _server_attributes(self, request: Request) -> dict[str, str | int]:
        host_header = (request.headers.get(b"host") or b"").decode("latin-1")
        host, _, port = host_header.rpartition(":")
        if not port.isdigit():
            host, port = host_header, ""
        attributes: dict[str, str | int] = {
            "http.request.method": method_of(request.method),
            "url.path": request.path.decode("latin-1"),
            "url.scheme": "http",
            "server.address": host,
        }
        if port:
            attributes["server.port"] = int(port)
        return attributes

    def _finish(
        self, method: bytes, state: RequestState, seconds: float, status: int, error: str | None
    ) -> None:
        key = (METHODS.get(method, OTHER_METHOD), error or status, state.route or NO_ROUTE)
        self.instruments.server.record_key(key, seconds)
        self.instruments.overhead.record_key(key, max(0.0, seconds - state.upstream_seconds))
        span = state.span
        if span is not None and span.is_recording():
            span.set_attribute("http.response.status_code", status)
            _mark_error(span, status, error)
            span.end()

    def upstream_call(self, request: Request, headers: HeaderList) -> UpstreamCall:
        """Start a CLIENT span under the request's SERVER span; send its traceparent upstream."""
        state = CURRENT.get()
        method = METHODS.get(request.method, OTHER_METHOD)  # method_of, a call less a request
        if state is None:
            return UpstreamSpan(self, None, None, method)
        server = state.span
        if server is None or self.tracer is None:
            return state.begin_call(self.instruments.client, method)
        if not server.is_recording():
            # Unsampled: no CLIENT span (its parent's decision stands), the decision goes on.
            _propagate(headers, server, b"traceparent" in request.headers)
            return UpstreamSpan(self, state, None, method)
        span = self.tracer.start_span(
            method,
            context=set_span_in_context(server),
            kind=SpanKind.CLIENT,
            attributes={
                **self.client_static,
                "http.request.method": method,
                "url.full": self.upstream_base + request.path.decode("latin-1"),
            },
        )
        _propagate(headers, span, b"traceparent" in request.headers)
        return UpstreamSpan(self, state, span, method)


def _propagate(headers: HeaderList, span: Span, replace: bool) -> None:
    value = traceparent(span)
    if value is not None:
        if replace:  # the client's traceparent names its own span, not ours
            headers[:] = [(k, v) for k, v in headers if k.lower() != b"traceparent"]
        headers.append((b"traceparent", value.encode("latin-1")))


def _mark_error(span: Span, status: int, error: str | None) -> None:
    if error is not None:
        span.set_attribute("error.type", error)
        span.set_status(StatusCode.ERROR, error)
    elif status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(StatusCode.ERROR)
