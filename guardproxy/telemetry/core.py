"""Telemetry: per-instance OpenTelemetry providers, the hooks the proxy calls, and /metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from guardproxy import __version__
from guardproxy.breaker.state import Transition
from guardproxy.hotpath.hooks import NO_TRACER, UpstreamTracer
from guardproxy.masking import mask_query
from guardproxy.policy.table import PolicyTable
from guardproxy.policy.thresholds import ModelKey, Snapshot, ThresholdTable
from guardproxy.state.base import PredictionRecord
from guardproxy.state.counts import cell
from guardproxy.tasks import cancel_and_wait
from guardproxy.telemetry.build import register_process_metrics
from guardproxy.telemetry.config import TelemetryConfig, build_resource
from guardproxy.telemetry.decisions import DecisionObserver, GroupLabels, GroupMode
from guardproxy.telemetry.export import (
    BoundedSpanProcessor,
    CountingMetricExporter,
    CountingSpanExporter,
)
from guardproxy.telemetry.exporters import metric_exporter, span_exporter
from guardproxy.telemetry.exposition import HistogramCollector, HistogramMetrics
from guardproxy.telemetry.instruments import RELOAD_RESULTS, TOTALS, Instruments
from guardproxy.telemetry.readings import FairnessSource, FleetSource
from guardproxy.telemetry.rpc import RpcTracer
from guardproxy.telemetry.scrape import Exposition, SharedRender
from guardproxy.telemetry.tracing import CURRENT, RequestTracer
from guardproxy.transport import Handler

log = logging.getLogger("guardproxy.telemetry")
SCOPE = "guardproxy"
BUILTIN_SAMPLERS = "opentelemetry.sdk.trace.sampling"
DISABLED: Exposition = (b"# guardproxy telemetry is disabled or shut down\n", CONTENT_TYPE_LATEST)


class Telemetry:
    """Traces and metrics of one proxy; providers are its own, never the global ones."""

    def __init__(
        self,
        config: TelemetryConfig,
        upstream: str,
        policies: Snapshot[PolicyTable] | None = None,
        thresholds: Snapshot[ThresholdTable] | None = None,
    ) -> None:
        self.config = config
        self.policies = policies
        self.thresholds = thresholds
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = GroupLabels()
        self.closed = False
        self.spans: BoundedSpanProcessor | None = None
        self.points: CountingMetricExporter | None = None
        self.periodic: PeriodicExportingMetricReader | None = None
        self.instruments = Instruments()
        self.instruments.label = self._group_label
        scope = InstrumentationScope(SCOPE, __version__)
        self.histograms = HistogramMetrics(self.instruments.histograms, scope)
        resource = build_resource(config)
        self.meter_provider = self._meters(resource) if not config.disabled else None
        if self.meter_provider is not None:
            self.instruments.observe(self.meter_provider.get_meter(SCOPE, __version__))
            self.registry.register(HistogramCollector(self.instruments.histograms, scope))
            register_process_metrics(self.registry)
        self.tracer_provider = self._tracers(resource) if config.tracing else None
        tracer = (
            self.tracer_provider.get_tracer(SCOPE, __version__) if self.tracer_provider else None
        )
        self.requests = RequestTracer(
            tracer, self.instruments, upstream, self._sampler_reads_attributes()
        )
        # The proxy's observer: a bound method is called faster than an object with __call__.
        self.observe = DecisionObserver(self.instruments, self.labels).observe
        self.rpc = RpcTracer(tracer, self.instruments.rpc)  # gRPC calls' durations and spans
        self.scrapes = SharedRender(self.instruments.read_sliced, self._render)
        self._refresher: asyncio.Task[None] | None = None

    def _meters(self, resource: Resource) -> MeterProvider:
        readers: list[MetricReader] = [PrometheusMetricReader(registry=self.registry)]
        config = self.config
        if config.metrics_endpoint:
            inner = metric_exporter(
                config.metrics_protocol, config.metrics_endpoint, config.timeout
            )
            self.points = CountingMetricExporter(
                inner, lambda data: self.histograms.merged(data, resource)
            )
            interval = self.config.export_interval * 1000
            self.periodic = PeriodicExportingMetricReader(self.points, interval, interval)
            readers.append(self.periodic)
        return MeterProvider(metric_readers=readers, resource=resource)

    def _tracers(self, resource: Any) -> TracerProvider:
        config = self.config
        assert config.traces_endpoint is not None  # config.tracing says so
        inner = span_exporter(config.traces_protocol, config.traces_endpoint, config.timeout)
        self.spans = BoundedSpanProcessor(CountingSpanExporter(inner), self.config.max_queue, 1.0)
        length = config.attribute_length
        limits = SpanLimits(max_attribute_length=length, max_span_attribute_length=length)
        provider = TracerProvider(resource=resource, shutdown_on_exit=False, span_limits=limits)
        provider.add_span_processor(self.spans)
        return provider

    def _sampler_reads_attributes(self) -> bool:
        """Whether the sampler may look at span attributes (any but the SDK's own)."""
        if self.tracer_provider is None:
            return False
        return type(self.tracer_provider.sampler).__module__ != BUILTIN_SAMPLERS

    @property
    def tracer(self) -> UpstreamTracer:
        """What the proxy calls around each upstream call."""
        return self.requests if not self.config.disabled else NO_TRACER

    def traced(self, handler: Handler) -> Handler:
        """The data port's handler wrapped in a SERVER span and HTTP metrics."""
        return handler if self.config.disabled else self.requests.traced(handler)

    def _mode(self, region: str, model: str) -> GroupMode:
        if self.policies is None:
            return "label"
        entry = self.policies.current.regions.get(region)
        found = entry.model(model) if entry is not None else None
        return found.spec.groups.telemetry if found is not None else "none"

    def _group_label(self, region: str, model: str, group: str) -> str:
        return self.labels(group, self._mode(region, model))

    def count_feedback(self, region: str, model: str, group: str, cell: str) -> None:
        """One joined label: cell is tp, fp, tn or fn."""
        if cell not in ("tp", "fp", "tn", "fn"):
            raise ValueError(f"feedback cell must be tp, fp, tn or fn, not {cell!r}")
        label = self._group_label(region, model, group)
        self.instruments.feedback.add_key((region, model, label, cell))

    def count_joined(self, joined: Iterable[tuple[PredictionRecord, int]]) -> None:
        """Joined labels as the fairness engine hands them over: (record, label) pairs."""
        for record, label in joined:
            self.count_feedback(
                record.region, record.model, record.group, cell(record.decision, label)
            )

    def breaker_transition(self, transition: Transition) -> None:
        """Breaker listener: count the transition, keep the state gauge, mark the current span."""
        key = (transition.region, transition.model)
        self.instruments.breaker[key] = transition.new
        self.instruments.transitions.add_key((*key, transition.new))
        state = CURRENT.get()
        if state is not None and state.span is not None and state.span.is_recording():
            event = {
                "guardproxy.breaker.from": transition.old,
                "guardproxy.breaker.to": transition.new,
            }
            state.span.add_event("guardproxy.breaker.transition", event)

    def breaker_state(self, region: str, model: str, state: str) -> None:
        """A breaker's current state (for breakers that have not transitioned yet)."""
        self.instruments.breaker[(region, model)] = state

    def policy_reload(self, result: str) -> None:
        """One policy reload: result is applied, unchanged or failed."""
        if result not in RELOAD_RESULTS:
            raise ValueError(f"reload result must be applied, unchanged or failed, not {result!r}")
        self.instruments.reloads.add_key((result,))

    def watch_reloads(self, read: Callable[[], Mapping[str, int]]) -> None:
        """Where the reload counter reads totals someone else keeps: {result: count}."""
        self.instruments.reload_source = read

    def record_drift(self, key: ModelKey, signal: str, test: str, value: float) -> None:
        """The latest drift statistic of a model's window (psi, ks, js...) for a signal."""
        self.instruments.drift[(*key, signal, test)] = float(value)

    def forget_drift(self, key: ModelKey) -> None:
        """A model version the monitors no longer keep: its drift gauges go too."""
        drift = self.instruments.drift
        for gauge in [g for g in drift if g[:3] == key]:
            del drift[gauge]

    def watch_fairness(self, source: FairnessSource) -> None:
        """Where the fairness gauges read their latest values (FairnessEngine.gauges' shape)."""
        self.instruments.fairness = source

    def watch_fleet(self, source: FleetSource) -> None:
        """Where the model health gauges read the fleet view's rows."""
        self.instruments.fleet = source

    def watch_total(self, name: str, read: Callable[[], int]) -> None:
        """A running total someone else keeps: one of instruments.TOTALS (samples.written...)."""
        if name not in TOTALS:
            raise ValueError(f"unknown total {name!r}; expected one of {', '.join(TOTALS)}")
        self.instruments.totals[name] = read

    def metrics_text(self, accept: str = "") -> bytes:
        """Prometheus text exposition of every instrument (OpenMetrics if `accept` asks)."""
        return self.exposition(accept)[0]

    def exposition(self, accept: str = "") -> Exposition:
        """/metrics rendered here and now, blocking (tests; the admin port awaits `scrape`)."""
        if self.meter_provider is None or self.closed:
            return DISABLED
        self.instruments.read_now()
        return self._render(accept)

    async def scrape(self, accept: str = "") -> Exposition:
        """/metrics: the body and its content type, rendered off the loop and shared."""
        if self.meter_provider is None or self.closed:
            return DISABLED
        return await self.scrapes(accept)

    def _render(self, accept: str) -> Exposition:
        # Runs in a worker thread: reads only copies of the aggregates and the readings.
        if self.meter_provider is None or self.closed:
            return DISABLED
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    def start(self) -> None:
        """Keep the gauges' readings fresh for the OTLP exporter, which collects in its thread."""
        if self.periodic is not None and self._refresher is None:
            loop = asyncio.get_running_loop()
            self._refresher = loop.create_task(self._refresh(self.config.export_interval / 2))

    async def _refresh(self, seconds: float) -> None:
        while True:
            await self.instruments.read_sliced()
            await asyncio.sleep(seconds)

    def flush(self, timeout: float = 5.0) -> bool:
        """Export queued spans and a metric collection now (blocking; tests, shutdown)."""
        ok = True
        if self.tracer_provider is not None:
            ok = self.tracer_provider.force_flush(int(timeout * 1000))
        if self.periodic is not None:
            # Not the provider's flush: that would also queue a copy into the Prometheus reader.
            ok = self.periodic.force_flush(timeout * 1000) and ok
        return ok

    def status(self) -> dict[str, Any]:
        """Export state and counts for /status."""
        spans, points = self.spans, self.points
        return {
            "enabled": not self.config.disabled,
            "tracing": self.tracer_provider is not None,
            "traces_endpoint": mask_query(self.config.traces_endpoint),
            "traces_protocol": self.config.traces_protocol,
            "metrics_endpoint": mask_query(self.config.metrics_endpoint),
            "metrics_protocol": self.config.metrics_protocol,
            "spans": {
                "exported": spans.exporter.exported if spans else 0,
                "export_failed": spans.exporter.failed if spans else 0,
                "dropped": spans.dropped if spans else 0,
            },
            "metric_points": {
                "exported": points.exported if points else 0,
                "export_failed": points.failed if points else 0,
            },
        }

    async def shutdown(self, seconds: float = 5.0) -> None:
        """Flush and stop the exporters, each on a thread, all within `seconds`."""
        if self.closed:
            return
        self.closed = True
        await cancel_and_wait(self._refresher)
        await self.scrapes.idle()  # a render under way collects before the meters stop
        # Side by side: one after the other, a silent collector held each for the whole
        # timeout, and the process twice as long.
        stopping = []
        if self.spans is not None:
            stopping.append(asyncio.to_thread(self.spans.shutdown, seconds))
        if self.meter_provider is not None:
            stopping.append(asyncio.to_thread(self.meter_provider.shutdown, seconds * 1000))
        await asyncio.gather(*stopping)
