"""Each gRPC call's access log line and SERVER span, as the data port writes them for HTTP.

The proxy opens a `CallRecord` when a call starts and closes it once with the call's status.
A guarded call's observation fills in its request id, region, model and outcome (`observed`
is one of the policy hook's observers); the span comes from a `CallTracer` (OpenTelemetry's
lives in telemetry/) and names itself as the parent of the upstream call.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

import grpc

from ..hotpath.observation import Observation
from ..hotpath.trust import well_formed_id
from ..logs import AccessLog
from .calls import REQUEST_ID, metadata_value
from .generated import grpc_predict_v2_pb2 as pb
from .hooks import Metadata, http_status

__all__ = ["NO_TRACER", "CallLog", "CallRecord", "CallSpan", "CallTracer", "observed"]


# What spans and metrics name a call by: the OIP service's methods and gRPC health's. A client
# may call any name (it is forwarded); any other is _OTHER, so no series grows with them.
_OIP = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
NAMED_METHODS = frozenset(
    {
        *(f"/{_OIP.full_name}/{m.name}" for m in _OIP.methods),
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    }
)
OTHER_METHOD = "_OTHER"


class CallSpan(Protocol):
    """One call's span."""

    def upstream(self, metadata: Metadata) -> Metadata:
        """The metadata to send upstream: trace context naming this span as the parent."""

    def end(self, code: int, name: str) -> None:
        """Close the span with the call's gRPC status (its number and name)."""


class CallTracer(Protocol):
    """Opens a span for each call."""

    def begin(self, method: str, metadata: Metadata) -> CallSpan:
        """A span for a call of `method` (`/package.Service/Method`, or `_OTHER`)."""


class _NoSpan:
    def upstream(self, metadata: Metadata) -> Metadata:
        return metadata

    def end(self, code: int, name: str) -> None:
        return None


class _NoTracer:
    def begin(self, method: str, metadata: Metadata) -> CallSpan:
        return NO_SPAN


NO_SPAN = _NoSpan()
NO_TRACER: CallTracer = _NoTracer()


@dataclass(slots=True)
class CallRecord:
    """What one call's access log line says; guarded calls learn theirs from the observation."""

    method: str
    started: float
    span: CallSpan
    request_id: str = ""
    region: str = ""
    model: str = ""
    outcome: str = "unguarded"
    sent: int = 0


# Each call runs in its own task, so the record set at its start is the one its observation
# (made in the same task) finds.
CURRENT: ContextVar[CallRecord | None] = ContextVar("guardproxy_grpc_call", default=None)


def observed(ob: Observation) -> None:
    """An observer: the guarded call's request id, region, model and outcome, for its line."""
    record = CURRENT.get()
    if record is not None:
        record.request_id, record.region = ob.request_id, ob.model.region
        record.model, record.outcome = ob.model.name, ob.outcome


class CallLog:
    """Opens and closes each call's record: one access log line and one span per call."""

    def __init__(self, access: AccessLog | None = None, tracer: CallTracer = NO_TRACER) -> None:
        self.access = access or AccessLog()
        self.tracer = tracer

    def begin(self, method: str, metadata: Metadata) -> CallRecord:
        """Open the record of a call that starts now."""
        named = method if method in NAMED_METHODS else OTHER_METHOD
        record = CallRecord(method, perf_counter(), self.tracer.begin(named, metadata))
        request_id = metadata_value(metadata, REQUEST_ID)
        if request_id is not None and well_formed_id(request_id):
            record.request_id = request_id
        CURRENT.set(record)
        return record

    def upstream(self, metadata: Metadata) -> Metadata:
        """The metadata the current call sends upstream (its span as the trace parent)."""
        record = CURRENT.get()
        return metadata if record is None else record.span.upstream(metadata)

    def refused(self) -> None:
        """The current call ends refused, unless its observation said how it ended (blocked)."""
        record = CURRENT.get()
        if record is not None and record.outcome == "unguarded":
            record.outcome = "refused"

    def end(self, record: CallRecord, code: grpc.StatusCode) -> None:
        """Close the record: its span ends, its access log line is written."""
        record.span.end(code.value[0], code.name)
        seconds = perf_counter() - record.started
        self.access.record(
            "GRPC", record.method, http_status(code), seconds, record.sent,
            record.request_id, record.region, record.model, record.outcome,
        )  # fmt: skip
