"""Real servers for tests: an upstream with awkward endpoints, and a way to serve any app."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from guardproxy.app import RunningProxy, running_proxy, start_site
from guardproxy.settings import Settings

__all__ = [
    "PATTERN",
    "RecordingModel",
    "RunningProxy",
    "eventually",
    "proxy_before",
    "proxy_settings",
    "running_proxy",
    "serving",
    "upstream_app",
    "write_policies",
]

PATTERN = bytes(range(256)) * 256  # 64 KiB of every byte value


async def eventually(
    check: Callable[[], object], within: float = 10.0, every: float = 0.01
) -> None:
    """Poll until `check()` is true (awaiting a coroutine result); fail after `within` s."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within} s: {check}")
        await asyncio.sleep(every)


@asynccontextmanager
async def serving(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve an app on a free port of host; yields its base URL."""
    runner, port = await start_site(app, host, 0, shutdown_timeout=5.0)
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def upstream_app() -> web.Application:
    """An upstream that echoes, streams, stalls, resets and answers any status."""
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_get("/bytes/{n}", download)
    app.router.add_post("/upload", upload)
    app.router.add_get("/sse", sse)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/slow/{seconds}", slow)
    app.router.add_get("/reset", reset)
    app.router.add_get("/gzip", gzip_body)
    return app


async def echo(request: web.Request) -> web.Response:
    """Everything the upstream received, as JSON."""
    body = await request.read()
    doc: dict[str, Any] = {
        "method": request.method,
        "path_qs": request.raw_path,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_length": len(body),
        "chunked": request.headers.get("Transfer-Encoding", "") == "chunked",
    }
    return web.json_response(doc, headers={"X-Upstream": "echo", "Set-Cookie": "a=1"})


async def download(request: web.Request) -> web.StreamResponse:
    """n bytes of a known pattern, streamed in 64 KiB chunks (no Content-Length)."""
    remaining = int(request.match_info["n"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    while remaining > 0:
        chunk = PATTERN[: min(len(PATTERN), remaining)]
        await response.write(chunk)
        remaining -= len(chunk)
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    """Consume a body as a stream; answer its size and digest."""
    digest, size = hashlib.sha256(), 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"size": size, "sha256": digest.hexdigest()})


async def sse(request: web.Request) -> web.StreamResponse:
    """Server-sent events, one every `interval` seconds, OpenAI style."""
    count = int(request.query.get("n", "5"))
    interval = float(request.query.get("interval", "0.2"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(count):
        await response.write(f'data: {{"token": {i}}}\n\n'.encode())
        await asyncio.sleep(interval)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def status(request: web.Request) -> web.Response:
    """Answer the status in the path; 204/304 carry no body."""
    code = int(request.match_info["code"])
    if code in (204, 304):
        return web.Response(status=code, headers={"ETag": '"v1"'})
    return web.json_response({"status": code}, status=code)


async def slow(request: web.Request) -> web.Response:
    """Answer after the given number of seconds."""
    await asyncio.sleep(float(request.match_info["seconds"]))
    return web.json_response({"slept": float(request.match_info["seconds"])})


async def reset(request: web.Request) -> web.StreamResponse:
    """Promise 1 MiB, send 64 KiB, then drop the connection."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = 1 << 20
    await response.prepare(request)
    await response.write(PATTERN)
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()
    return response


async def gzip_body(request: web.Request) -> web.Response:
    """A gzip-encoded body, to check it passes through still encoded."""
    import gzip

    data = gzip.compress(b"hello " * 100)
    return web.Response(
        body=data, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
    )


class RecordingModel:
    """A KServe v2 model answering a fixed score, keeping every request's body and headers.

    `lenient` answers any path, as a server that normalises paths before routing would.
    """

    def __init__(self, score: float = 0.7, status: int = 200, lenient: bool = False) -> None:
        self.score, self.status, self.lenient = score, status, lenient
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        self.headers: list[CIMultiDict[str]] = []

    def app(self) -> web.Application:
        """The app: POST /v2/models/{name}/infer and the versioned form."""
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/v2/models/{name}/infer", self._infer)
        app.router.add_post("/v2/models/{name}/versions/{version}/infer", self._infer)
        if self.lenient:  # as servers that normalise paths before routing: any path scores
            app.router.add_post("/{tail:.*}", self._infer)
        return app

    async def _infer(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        self.paths.append(request.raw_path)
        self.headers.append(CIMultiDict(request.headers))
        rows = 1
        with suppress(ValueError, KeyError, IndexError, TypeError):
            rows = int(json.loads(self.bodies[-1])["inputs"][0]["shape"][0])
        outputs = [
            {"name": "score", "shape": [rows], "datatype": "FP32", "data": [self.score] * rows}
        ]
        return web.json_response({"model_name": "m", "outputs": outputs}, status=self.status)


def write_policies(directory: Path, files: Mapping[str, str]) -> Path:
    """Policy files (name -> YAML text) in a directory, created when missing."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


@asynccontextmanager
async def proxy_before(
    app: web.Application, tmp_path: Path, policies: Mapping[str, str], **overrides: Any
) -> AsyncIterator[RunningProxy]:
    """`app` on a free port and a proxy in front of it serving these policy files."""
    async with serving(app) as url:
        settings = proxy_settings(
            url, policies=write_policies(tmp_path / "policies", policies),
            samples_dir=tmp_path / "samples", **overrides,
        )  # fmt: skip
        async with running_proxy(settings) as proxy:
            yield proxy


def proxy_settings(upstream: str, **overrides: Any) -> Settings:
    """Settings for a proxy on free loopback ports in front of `upstream`."""
    values: dict[str, Any] = {
        "upstream": upstream,
        "listen": ("127.0.0.1", 0),
        "admin": ("127.0.0.1", 0),
        "drain_timeout": 5.0,
        "admin_token": "admin-secret",
        "feedback_token": "feedback-secret",
    }
    values.update(overrides)
    return Settings(**values)


class OtlpReceiver:
    """A real OTLP/HTTP receiver: decodes protobuf trace and metric exports and keeps them."""

    def __init__(self) -> None:
        self.url = ""
        self.trace_requests: list[Any] = []
        self.metric_requests: list[Any] = []

    def app(self) -> web.Application:
        """The receiver's aiohttp app (POST /v1/traces, POST /v1/metrics)."""
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as traces

        message = traces.ExportTraceServiceRequest.FromString(await _otlp_body(request))
        self.trace_requests.append(message)
        return _otlp_reply(traces.ExportTraceServiceResponse())

    async def _metrics(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics

        message = metrics.ExportMetricsServiceRequest.FromString(await _otlp_body(request))
        self.metric_requests.append(message)
        return _otlp_reply(metrics.ExportMetricsServiceResponse())

    def spans(self) -> list[Any]:
        """Every span received, in arrival order."""
        return [
            span
            for message in self.trace_requests
            for resource in message.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def resources(self) -> list[dict[str, Any]]:
        """The resource attributes of every span export."""
        return [
            attributes_of(resource.resource.attributes)
            for message in self.trace_requests
            for resource in message.resource_spans
        ]

    def metrics(self, name: str) -> list[Any]:
        """The latest export's metrics with this name (cumulative, so the latest holds all)."""
        for message in reversed(self.metric_requests):
            found = [
                metric
                for resource in message.resource_metrics
                for scope in resource.scope_metrics
                for metric in scope.metrics
                if metric.name == name
            ]
            if found:
                return found
        return []


def attributes_of(key_values: Any) -> dict[str, Any]:
    """OTLP KeyValue list into a plain dict."""
    out: dict[str, Any] = {}
    for item in key_values:
        kind = item.value.WhichOneof("value")
        out[item.key] = getattr(item.value, kind) if kind else None
    return out


async def _otlp_body(request: web.Request) -> bytes:
    import gzip

    body = await request.read()
    if request.headers.get("Content-Encoding") == "gzip":
        return gzip.decompress(body)
    return body


def _otlp_reply(message: Any) -> web.Response:
    return web.Response(body=message.SerializeToString(), content_type="application/x-protobuf")


@asynccontextmanager
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    """An OTLP/HTTP receiver on a free loopback port; its base URL is receiver.url."""
    receiver = OtlpReceiver()
    async with serving(receiver.app()) as url:
        receiver.url = url
        yield receiver
