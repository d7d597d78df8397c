"""A real OTLP/gRPC receiver: the collector's TraceService and MetricsService on grpc.aio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as traces
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as traces_grpc

from guardproxy.testing import OtlpReceiver


class GrpcOtlpReceiver(OtlpReceiver):
    """Keeps every decoded export request, as the OTLP/HTTP receiver does."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, dict[str, str]]] = []  # (service, metadata) per call

    def _seen(self, service: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        metadata = {k: str(v) for k, v in (context.invocation_metadata() or ())}
        self.calls.append((service, metadata))


class _Traces(traces_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, receiver: GrpcOtlpReceiver) -> None:
        self.receiver = receiver

    async def Export(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.receiver._seen("traces", context)
        self.receiver.trace_requests.append(request)
        return traces.ExportTraceServiceResponse()


class _Metrics(metrics_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self, receiver: GrpcOtlpReceiver) -> None:
        self.receiver = receiver

    async def Export(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.receiver._seen("metrics", context)
        self.receiver.metric_requests.append(request)
        return metrics.ExportMetricsServiceResponse()


@asynccontextmanager
async def grpc_otlp_receiver() -> AsyncIterator[GrpcOtlpReceiver]:
    """An OTLP/gRPC receiver on a free loopback port; receiver.url is http://127.0.0.1:PORT."""
    receiver = GrpcOtlpReceiver()
    server = grpc.aio.server()
    traces_grpc.add_TraceServiceServicer_to_server(_Traces(receiver), server)
    metrics_grpc.add_MetricsServiceServicer_to_server(_Metrics(receiver), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    receiver.url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await server.stop(None)
