"""gRPC calls' durations, and SERVER spans continuing the client's trace and parenting the
upstream's.

The span is the request's current span while the call runs, so the decision observer
annotates it as it annotates an HTTP request's (model, version, decisions, outcome).
"""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter

from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer

from guardproxy.telemetry.aggregate import Histograms
from guardproxy.telemetry.tracing import CURRENT, PROPAGATOR, RequestState, traceparent

Metadata = tuple[tuple[str, str | bytes], ...]
TRACE_KEYS = ("traceparent", "tracestate")


class RpcSpan:
    """One call: its duration, and its SERVER span when tracing is on."""

    __slots__ = ("durations", "method", "name", "span", "started")

    def __init__(self, span: Span | None, name: str, durations: Histograms) -> None:
        self.span, self.name, self.durations = span, name, durations
        self.method = name.rpartition("/")[2]
        self.started = perf_counter()

    def upstream(self, metadata: Metadata) -> Metadata:
        """The metadata with this span as the upstream call's parent (when it records)."""
        span = self.span
        value = traceparent(span) if span is not None and span.is_recording() else None
        if value is None:  # no span, or unsampled: the client's own trace context goes on
            return metadata
        kept = tuple((k, v) for k, v in metadata if k not in TRACE_KEYS)
        return (*kept, ("traceparent", value))

    def end(self, code: int, name: str) -> None:
        """Record the duration; close the span with the status (any but OK is an error)."""
        # A method of the OIP or health service, or _OTHER (CallLog names it): bounded.
        self.durations.record_key((self.method, code), perf_counter() - self.started)
        span = self.span
        if span is None:
            return
        if span.is_recording():
            span.update_name(self.name)  # the decision observer names spans after HTTP routes
            span.set_attribute("rpc.grpc.status_code", code)
            if code != 0:
                span.set_attribute("error.type", name)
                span.set_status(StatusCode.ERROR, name)
        span.end()


class RpcTracer:
    """Times each gRPC call and, when tracing, spans it (`CallTracer` of guardproxy.grpc)."""

    def __init__(self, tracer: Tracer | None, durations: Histograms) -> None:
        self.tracer, self.durations = tracer, durations

    def begin(self, method: str, metadata: Sequence[tuple[str, str | bytes]]) -> RpcSpan:
        """A span named `package.Service/Method`, a child of the client's traceparent if any."""
        name = method.lstrip("/")
        if self.tracer is None:
            return RpcSpan(None, name, self.durations)
        carrier = {k: v for k, v in metadata if k in TRACE_KEYS and isinstance(v, str)}
        parent = PROPAGATOR.extract(carrier) if carrier else None
        service, _, rpc_method = name.rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.method": rpc_method}
        if service:  # none for a method the proxy does not name (_OTHER)
            attributes["rpc.service"] = service
        span = self.tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        CURRENT.set(RequestState(span))
        return RpcSpan(span, name, self.durations)
