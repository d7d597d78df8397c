"""The two listeners (data port, admin port) and the lifecycle of what they share."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from guardproxy import __version__
from guardproxy.admin import build_admin_app
from guardproxy.bearer import Token
from guardproxy.breaker.board import BreakerBoard
from guardproxy.dataport import DataPort, data_server
from guardproxy.feedback import MAX_BODY as FEEDBACK_BODY
from guardproxy.feedback import FeedbackEndpoint
from guardproxy.grpc_port import GrpcPort
from guardproxy.guards.base import GuardChain
from guardproxy.guards.chain import GuardContext, build_chain
from guardproxy.guards.draws import Draws
from guardproxy.hotpath.admission import Fallbacks
from guardproxy.hotpath.proxy import Proxy
from guardproxy.hotpath.trust import Trust
from guardproxy.hotpath.upstream import Upstream
from guardproxy.keys import DecisionKey
from guardproxy.logs import AccessLog, dropped
from guardproxy.masking import Masker
from guardproxy.monitors.engine import FairnessEngine
from guardproxy.monitors.fleet import FleetView, Monitors
from guardproxy.monitors.health import ModelHealth
from guardproxy.monitors.marks import WrittenMarks
from guardproxy.monitors.watchdog import Watchdog
from guardproxy.monitors.worker import MonitorWorker
from guardproxy.policy.models import ModelPolicy
from guardproxy.policy.thresholds import Snapshot, ThresholdTable
from guardproxy.policy.watch import PolicyStore, PolicyWatcher
from guardproxy.sampling.sinks import (
    JsonlSink,
    RedisStreamSink,
    SampleQueue,
    SampleWriter,
    Sink,
    SinkError,
)
from guardproxy.settings import PortUnavailable, Settings
from guardproxy.state import open_state, redis_location
from guardproxy.telemetry import Telemetry, TelemetryConfig
from guardproxy.telemetry.loop import GcPauses, LoopLag

log = logging.getLogger("guardproxy")
GC_THRESHOLDS = (3_000, 20, 20)
SAMPLE_GATHER = 0.2  # seconds a batch of samples gathers before one thread writes it
SWITCH_INTERVAL = 0.001  # seconds a background thread may hold the GIL while the loop waits


class Runtime:
    """Everything both ports share, composed once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = time.time()
        self.draining = False
        self._background: set[asyncio.Task[object]] = set()
        self.upstream = Upstream(settings.upstream, settings.timeouts, settings.limits)
        self.thresholds: Snapshot[ThresholdTable] = Snapshot(ThresholdTable())
        self.samples = SampleQueue()  # sized below, from the default policy
        self.draws = Draws()
        self.guard_context = GuardContext(
            self.thresholds, self.samples, draws=self.draws, max_rows=settings.max_rows
        )
        self.store = PolicyStore(
            settings.policies, default_region=settings.region, build_chain=self.build_chain
        )
        self.watcher = PolicyWatcher(self.store, settings.poll_interval)
        sink = self.store.table.default.policy.sampling.sink
        self.samples.maxsize, self.samples.max_bytes = sink.queue, sink.queue_bytes
        self.sample_writer = SampleWriter(self.samples, self._sample_sink(), gather=SAMPLE_GATHER)
        self.state = open_state(settings.state)
        self.decision_key = DecisionKey(
            self.draws, self.state, settings.decision_key, source=settings.decision_key_source
        )
        self.engine = FairnessEngine(self.state, self.store.snapshot, self.thresholds)
        self.admin_token = Token(settings.admin_token, settings.admin_token_file)
        self.feedback_token = Token(settings.feedback_token, settings.feedback_token_file)
        self.feedback = FeedbackEndpoint(
            self.engine,
            self.feedback_token,
            max_body=min(settings.max_body, FEEDBACK_BODY),
            settle=self.records_written,
        )
        # Labels reach any worker of any replica: on a shared backend, each process says how
        # far its records are written, and a label waits for the others' too.
        self.marks = (
            None if settings.state == "memory" else WrittenMarks(self.state, self._written_here)
        )
        self.telemetry = self.build_telemetry()
        self.watch_telemetry()
        self.breakers = BreakerBoard(self.store.snapshot, telemetry=self.telemetry)
        self.fallbacks = Fallbacks(settings.timeouts, settings.limits)
        self.fallbacks.follow(self.store.table)
        self.breakers.table_listeners.append(self.fallbacks.follow)
        self.watchdog = Watchdog(self.breakers, self.engine, self.telemetry)
        self.breakers.tickers.append(self.watchdog.tick)
        self.worker = MonitorWorker(settings.monitor_budget)
        self.health = ModelHealth()
        self.worker.consumers += [self.engine, self.watchdog, self.health]
        self.worker.flushers.append(self.engine.flush)
        self.fleet = FleetView(self.breakers, Monitors(self.engine, self.watchdog, self.health))
        self.telemetry.watch_fleet(self.fleet.each_row)
        self.proxy = Proxy(
            self.upstream,
            self.store.snapshot,
            observers=(self.worker.offer, self.telemetry.observe),
            breakers=self.breakers,
            fallbacks=self.fallbacks,
            tracer=self.telemetry.tracer,
            trust=Trust(settings.trust_region_header, settings.trust_forwarded),
            max_body=settings.max_body,
            max_rows=settings.max_rows,
            access=AccessLog(settings.access_log),
            # Each worker keeps to its share (the proxy raises it to one whole body).
            max_buffered=settings.max_buffered // settings.workers,
        )
        port = DataPort(self.telemetry.traced(self.proxy.handle), self.feedback.handle)
        self.server = data_server(port.handle, settings)
        self.loop_lag = LoopLag()
        self.gc_pauses = GcPauses()
        self.grpc: GrpcPort | None = None
        if settings.grpc_listen is not None:
            self.grpc = GrpcPort(
                settings, self.store.snapshot, self.breakers, self.proxy.observers,
                self.telemetry.rpc, self.proxy.bodies,
            )  # fmt: skip

    def build_telemetry(self) -> Telemetry:
        """Traces and metrics from OTEL_* and the --otlp-endpoint / --service-name flags."""
        settings = self.settings
        config = TelemetryConfig.from_env(
            otlp_endpoint=settings.otlp_endpoint,
            service_name=settings.service_name,
            region=settings.region,
        )
        return Telemetry(config, settings.upstream, self.store.snapshot)

    def watch_telemetry(self) -> None:
        """Point the gauges and observable counters at the totals the parts already keep."""
        telemetry, store = self.telemetry, self.store
        telemetry.watch_fairness(self.engine.each_gauge)
        telemetry.watch_total("samples.written", lambda: self.sample_writer.written)
        telemetry.watch_total(
            "samples.dropped", lambda: self.samples.dropped + self.sample_writer.dropped
        )
        telemetry.watch_total("queue.dropped", lambda: self.worker.dropped)
        telemetry.watch_total("logs.dropped", dropped)
        telemetry.watch_reloads(
            lambda: {"applied": store.reloads_ok, "failed": store.reloads_failed}
        )
        self.engine.label_listeners.append(telemetry.count_joined)

    def build_chain(self, region: str, spec: ModelPolicy, version: str) -> GuardChain:
        """The guard chain of one model (runs in a thread on reload: pure)."""
        return build_chain(region, spec, version, self.guard_context)

    def _sample_sink(self) -> Sink:
        """The process-wide sample sink, as the default region's policy names it."""
        spec = self.store.table.default.policy.sampling.sink
        if spec.redis_stream:
            if self.settings.state == "memory":
                raise SinkError(
                    "sampling.sink.redis_stream needs --state redis://HOST:PORT/DB: "
                    "the stream is written to that Redis"
                )
            url, _ = redis_location(self.settings.state)  # the stream keeps its own name
            return RedisStreamSink(url, spec.redis_stream)
        directory = spec.jsonl or self.settings.samples_dir
        # Workers share the directory: each writes, counts and deletes its own files, within
        # its share of the budget.
        workers = self.settings.workers
        return JsonlSink(
            directory,
            spec.max_bytes,
            spec.max_age,
            max_total_bytes=spec.max_total_bytes // workers,
            retention=spec.retention,
            suffix=f"-w{self.settings.worker}" if workers > 1 else "",
        )

    @asynccontextmanager
    async def lifecycle(self) -> AsyncIterator[None]:
        """Start each part, and stop each one that started, in reverse order (even on failure)."""
        async with contextlib.AsyncExitStack() as parts:
            parts.push_async_callback(self.telemetry.shutdown)
            self.telemetry.start()
            parts.push_async_callback(self.upstream.close)
            parts.push_async_callback(self.state.close)
            await self.decision_key.start()  # before any request draws
            parts.push_async_callback(self.decision_key.stop)
            await self.engine.start()
            parts.push_async_callback(self.engine.stop)
            if self.marks is not None:  # its mark goes once the worker's records are written
                self.marks.start()
                parts.push_async_callback(self.marks.stop)
            self.sample_writer.start()
            parts.push_async_callback(self.sample_writer.stop, True)
            await self.fallbacks.start()
            parts.push_async_callback(self.fallbacks.stop)
            await self.breakers.start()
            parts.push_async_callback(self.breakers.stop)
            self.worker.start()
            parts.push_async_callback(self.worker.stop, True)
            await self.watcher.start()
            parts.push_async_callback(self.watcher.stop)
            parts.callback(self.loop_lag.stop)  # started by serve() once startup is done
            parts.callback(self.gc_pauses.stop)
            if self.grpc is not None:  # stopped first: its last calls still reach the monitors
                await self.grpc.start()
                parts.push_async_callback(self.grpc.stopped, self.settings.drain_timeout)
            yield

    def records_written(self) -> Awaitable[None]:
        """Done once the answers sent before the call have their records written (or lost),
        by this process and, on a shared backend, by every other."""
        since, here = time.time(), self._written_here()  # the marks are taken now

        async def written() -> None:
            await here
            if self.marks is not None:
                await self.marks.others_written(since)

        return written()

    def _written_here(self) -> Awaitable[None]:
        """Done once this process's answers sent before the call have their records written."""
        monitored = self.worker.caught_up()  # the mark is taken now, not when awaited

        async def written() -> None:
            await monitored
            await self.engine.recorder.caught_up()

        return written()

    def reload_soon(self) -> None:
        """SIGHUP: re-read the policy directory now, off the signal handler."""
        task = asyncio.get_running_loop().create_task(self.watcher.check(force=True))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def masker(self) -> Masker:
        """What /status and logs must not show: tokens, keys, values from the environment."""
        rotated = (self.admin_token.current(), self.feedback_token.current())
        secrets = (*self.settings.secrets(), *(t for t in rotated if t))
        return Masker((*secrets, *self.store.table.secrets))

    def problems(self) -> tuple[list[str], list[str]]:
        """What makes the pod unready, and what degrades it (counted failures of its parts)."""
        unready = ["draining"] if self.draining else []
        degraded = [
            f"monitor {name} failed {n} time(s)" for name, n in self.worker.consumer_errors.items()
        ]
        degraded += [f"breaker ticker failed {self.breakers.ticker_errors} time(s)"] * bool(
            self.breakers.ticker_errors
        )
        if self.engine.last_error is not None:
            degraded.append(f"state backend: {self.engine.last_error}")
        if self.engine.table.last_error is not None:
            degraded.append(f"threshold table not synced: {self.engine.table.last_error}")
        if self.store.last_error:
            degraded.append("the last policy reload failed; the previous policies serve")
        masker = self.masker()
        return unready, [masker.text(line) for line in degraded]

    def status(self) -> dict[str, object]:
        """The JSON the admin port's /status returns, every secret masked."""
        return cast(dict[str, object], self.masker().document(self._status()))

    def _status(self) -> dict[str, object]:
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 3),
            "upstream": self.upstream.display,
            "worker": {
                "index": self.settings.worker,
                "of": self.settings.workers,
                "pid": os.getpid(),
            },
            "trust": {
                "region_header": self.settings.trust_region_header,
                "forwarded": self.settings.trust_forwarded,
            },
            "draining": self.draining,
            "requests": self.proxy.counts.as_dict(),
            "request_bodies": self.proxy.bodies.status(),
            "data_port": self.server.status(),
            "upstream_pool": self.upstream.status(),
            "loop": {"lag": self.loop_lag.status(), "gc": self.gc_pauses.status()},
            "policies": self.store.status(),
            "thresholds": {
                "version": self.thresholds.current.version,
                "in_sync": self.engine.table.status()["in_sync"],
            },
            "samples": self.sample_writer.status(),
            "decision_key": self.decision_key.status(),
            "fairness": self.engine.status(),
            "monitor": self.worker.status(),
            "breakers": {**self.breakers.status(), "fallbacks": self.fallbacks.status()},
            "drift": self.watchdog.status(),
            "feedback": {
                **self.feedback.counts,
                "marks": self.marks.status() if self.marks is not None else None,
            },
            "telemetry": self.telemetry.status(),
            "grpc": self.grpc.status() if self.grpc is not None else None,
            "logs": {"access_log": self.settings.access_log, "dropped": dropped()},
        }


async def start_site(
    app: web.Application, host: str, port: int, shutdown_timeout: float = 20.0
) -> tuple[web.AppRunner, int]:
    """Serve an app on host:port (0 picks a free port); returns the runner and the port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Runtime, int, int], Awaitable[None] | None] | None = None,
    handle_signals: bool = True,
) -> None:
    """Run both ports until SIGTERM/SIGINT (or `stop`), then drain and exit."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    runtime = Runtime(settings)
    if handle_signals:
        loop.add_signal_handler(signal.SIGHUP, runtime.reload_soon)
    async with runtime.lifecycle():
        host, port = settings.listen
        try:
            data_port = await runtime.server.start(host, port, reuse_port=settings.workers > 1)
        except OSError as exc:
            raise PortUnavailable.of("--listen", settings.listen, exc) from None
        try:
            admin, admin_port = await start_site(build_admin_app(runtime), *settings.admin)
        except BaseException as exc:
            await runtime.server.shutdown(0)
            if isinstance(exc, OSError):
                raise PortUnavailable.of("--admin", settings.admin, exc) from None
            raise
        settle_memory()
        runtime.loop_lag.start()
        runtime.gc_pauses.start()
        log.info(
            "serving on %s:%d (admin %s:%d) -> %s%s",
            host, data_port, settings.admin[0], admin_port, runtime.upstream.display,
            f" [worker {settings.worker} of {settings.workers}]" if settings.workers > 1 else "",
            extra={"data_port": data_port, "admin_port": admin_port, "version": __version__},
        )  # fmt: skip
        if runtime.grpc is not None:
            log.info("gRPC on %s -> %s", runtime.grpc.status()["listen"], runtime.grpc.upstream)
        if on_ready is not None:
            result = on_ready(runtime, data_port, admin_port)
            if result is not None:
                await result
        await stop.wait()
        log.info("draining: %d in flight", runtime.proxy.counts.in_flight)
        runtime.draining = True
        if runtime.grpc is not None:  # drains alongside the data port, within the same timeout
            runtime.grpc.drain(settings.drain_timeout)
        await runtime.server.shutdown(settings.drain_timeout)  # in-flight requests finish
        await admin.cleanup()
    log.info("stopped")


def settle_memory() -> None:
    """Keep what startup built out of every GC pass; collect young objects less often.

    Everything built so far lives as long as the process: frozen, it no longer adds ~12 ms to
    each full collection. At the default first threshold (700) a young collection ran every
    few requests and kept finding the objects of the requests in flight, promoting them to be
    scanned again: ~12 µs of collection per request under load. At 3,000: ~2 µs, and each
    young collection stays near 1 ms (at 10,000 one took 6-7 ms).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # Redaction, sample writes and drift windows run in threads: the default 5 ms switch
    # interval let one of them hold the GIL, and so the event loop, for that long.
    sys.setswitchinterval(SWITCH_INTERVAL)


@asynccontextmanager
async def running_proxy(settings: Settings) -> AsyncIterator[RunningProxy]:
    """Run `serve()` in the current loop until the block ends (demo, tests)."""
    stop = asyncio.Event()
    ready: asyncio.Future[RunningProxy] = asyncio.get_running_loop().create_future()

    def on_ready(runtime: Runtime, data_port: int, admin_port: int) -> None:
        host = "127.0.0.1"
        grpc = f"{host}:{runtime.grpc.port}" if runtime.grpc is not None else None
        ready.set_result(
            RunningProxy(runtime, f"http://{host}:{data_port}", f"http://{host}:{admin_port}", grpc)
        )

    task = asyncio.create_task(serve(settings, stop, on_ready, handle_signals=False))
    waiters: set[asyncio.Future[Any]] = {task, ready}
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # startup failed: raise its error
    try:
        yield ready.result()
    finally:
        stop.set()
        await task


@dataclass(frozen=True, slots=True)
class RunningProxy:
    """A proxy serving in the test's loop."""

    runtime: Runtime
    url: str
    admin_url: str
    grpc_target: str | None = None  # HOST:PORT of the gRPC port, when configured
