"""SERVER spans around gRPC calls, continuing the client's trace and parenting the upstream's.

The span is the request's current span while the call runs, so the decision observer
annotates it as it annotates an HTTP request's (model, version, decisions, outcome).
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer

from guardproxy.telemetry.tracing import CURRENT, PROPAGATOR, RequestState, traceparent

Metadata = tuple[tuple[str, str | bytes], ...]
TRACE_KEYS = ("traceparent", "tracestate")


class RpcSpan:
    """One call's SERVER span."""

    __slots__ = ("name", "span")

    def __init__(self, span: Span, name: str) -> None:
        self.span, self.name = span, name

    def upstream(self, metadata: Metadata) -> Metadata:
        """The metadata with this span as the upstream call's parent (when it records)."""
        value = traceparent(self.span) if self.span.is_recording() else None
        if value is None:  # unsampled: the client's own trace context goes on
            return metadata
        kept = tuple((k, v) for k, v in metadata if k not in TRACE_KEYS)
        return (*kept, ("traceparent", value))

    def end(self, code: int, name: str) -> None:
        """Close the span with the gRPC status; any but OK marks it as an error."""
        span = self.span
        if span.is_recording():
            span.update_name(self.name)  # the decision observer names spans after HTTP routes
            span.set_attribute("rpc.grpc.status_code", code)
            if code != 0:
                span.set_attribute("error.type", name)
                span.set_status(StatusCode.ERROR, name)
        span.end()


class RpcTracer:
    """Opens a SERVER span for each gRPC call (`CallTracer` of guardproxy.grpc)."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def begin(self, method: str, metadata: Sequence[tuple[str, str | bytes]]) -> RpcSpan:
        """A span named `package.Service/Method`, a child of the client's traceparent if any."""
        carrier = {k: v for k, v in metadata if k in TRACE_KEYS and isinstance(v, str)}
        parent = PROPAGATOR.extract(carrier) if carrier else None
        name = method.lstrip("/")
        service, _, rpc_method = name.rpartition("/")
        span = self.tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method},
        )
        CURRENT.set(RequestState(span))
        return RpcSpan(span, name)
