"""Exporters that count what they sent and what failed, and a span queue that counts drops."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from guardproxy.telemetry.exporters import CUMULATIVE

log = logging.getLogger("guardproxy.telemetry")


class CountingSpanExporter(SpanExporter):
    """Wraps an exporter: spans taken, exported and failed, never raising into the batcher."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.taken = self.exported = self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export one batch on the batcher's thread."""
        self.taken += len(spans)
        try:
            result = self.inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        """Stop the wrapped exporter."""
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing buffered here."""
        return True


class BoundedSpanProcessor(SpanProcessor):
    """A BatchSpanProcessor that refuses spans beyond max_queue waiting ones, counting drops."""

    def __init__(self, exporter: CountingSpanExporter, max_queue: int, delay: float) -> None:
        self.exporter = exporter
        self.max_queue = max_queue
        self.queued = self.dropped = 0
        # Headroom over max_queue: the gate below is approximate across two threads.
        self.batch = BatchSpanProcessor(
            exporter,
            max_queue_size=max_queue + 512,
            schedule_delay_millis=delay * 1000,
            max_export_batch_size=min(512, max_queue),
        )

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Queue a finished span, or drop and count it when the exporter is behind."""
        if self.queued - self.exporter.taken >= self.max_queue:
            self.dropped += 1
            return
        self.queued += 1
        self.batch.on_end(span)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Flush what the exporter takes within the timeout, then stop.

        The batcher's own shutdown waits up to 30 s for an export in flight; it runs on a
        daemon thread here, so a silent collector costs at most `timeout`.
        """
        stopping = threading.Thread(
            target=self.batch.shutdown, name="guardproxy-span-shutdown", daemon=True
        )
        stopping.start()
        stopping.join(timeout)
        if stopping.is_alive():
            log.warning("span exporter still busy after %.1f s; leaving it behind", timeout)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export everything queued now."""
        return self.batch.force_flush(timeout_millis)


Amend = Callable[[MetricsData], MetricsData]


class CountingMetricExporter(MetricExporter):
    """Wraps a metric exporter: adds what `amend` contributes, counts points exported and failed.

    Cumulative for every instrument, as the wrapped exporter is built (exporters.CUMULATIVE).
    """

    def __init__(self, inner: MetricExporter, amend: Amend | None = None) -> None:
        super().__init__(preferred_temporality=CUMULATIVE)
        self.inner = inner
        self.amend = amend
        self.exported = self.failed = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Export one collection on the reader's thread."""
        try:
            if self.amend is not None:
                metrics_data = self.amend(metrics_data)
        except Exception:
            log.exception("could not add the histograms to a metric export")
        points = count_points(metrics_data)
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis)
        except Exception:
            result = MetricExportResult.FAILURE
        if result is MetricExportResult.SUCCESS:
            self.exported += points
        else:
            self.failed += points
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing buffered here."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Stop the wrapped exporter."""
        self.inner.shutdown(timeout_millis=timeout_millis)


def count_points(data: MetricsData) -> int:
    """How many data points one collection holds."""
    return sum(
        len(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    )
