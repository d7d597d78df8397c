"""The gRPC port of `serve`: started with the runtime, in /status and /readyz, drained on stop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc import aio

from guardproxy.app import Runtime, serve
from guardproxy.hotpath.upstream import Limits
from guardproxy.testing import eventually, proxy_settings, running_proxy, serving, upstream_app

from .grpc.guarded import guarded, infer, rows


async def test_status_reports_the_grpc_port(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g, aiohttp.ClientSession() as http:
        await infer(g.target, rows())
        async with http.get(g.proxy.admin_url + "/status") as response:
            status = (await response.json())["grpc"]
        assert status["listen"] == g.target
        assert status["upstream"] == g.proxy.runtime.settings.grpc_upstream
        assert status["calls"]["calls"] == {"infer": 1}
        assert status["guards"]["guarded"] == 1
        async with http.get(g.proxy.admin_url + "/readyz") as response:
            assert response.status == 200


async def test_the_upstream_limits_bound_inference_calls_per_model(tmp_path: Path) -> None:
    limits = Limits(per_key=1, queue=1)  # --upstream-concurrency 1 --upstream-queue 1
    async with guarded(tmp_path, limits=limits) as g, aiohttp.ClientSession() as http:
        runtime = g.proxy.runtime
        assert runtime.grpc is not None
        slots = runtime.grpc.proxy.slots
        first = asyncio.create_task(infer(g.target, rows(hold="1")))
        await eventually(lambda: g.model.holding == 1)
        second = asyncio.create_task(infer(g.target, rows(hold="1")))
        await eventually(lambda: slots.status()["keys"]["default/echo"]["waiting"] == 1)
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(g.target, rows())
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "(default/echo)" in (raised.value.details() or "")
        answer, _, _ = await infer(g.target, rows("tagger", tags=["cat"]))  # guarded, own slots
        assert answer.model_name == "tagger"
        answer, _, _ = await infer(g.target, rows("plain"))  # unguarded: the one shared key
        assert answer.model_name == "plain"
        g.model.gate.set()
        for call in (first, second):
            answer, initial, _ = await call
            assert answer.model_name == "echo" and "x-guard-decision" in initial
        answer, _, _ = await infer(g.target, rows())  # the slots came back
        assert answer.model_name == "echo"
        async with http.get(g.proxy.admin_url + "/status") as response:
            calls = (await response.json())["grpc"]["calls"]
        assert calls["busy"] == {"default/echo": 1}
        assert calls["statuses"]["RESOURCE_EXHAUSTED"] == 1
        assert calls["slots"] == {"limit": 1, "queue": 1, "queue_timeout": 10.0, "keys": {}}


async def test_without_the_flags_there_is_no_grpc_port() -> None:
    async with serving(upstream_app()) as url, running_proxy(proxy_settings(url)) as proxy:
        assert proxy.grpc_target is None
        assert proxy.runtime.status()["grpc"] is None


async def test_not_ready_while_the_grpc_upstream_refuses_connections(tmp_path: Path) -> None:
    async with serving(upstream_app()) as url:
        settings = proxy_settings(
            url, grpc_listen=("127.0.0.1", 0), grpc_upstream="127.0.0.1:1",
            samples_dir=tmp_path,
        )  # fmt: skip
        async with running_proxy(settings) as proxy, aiohttp.ClientSession() as http:
            async with http.get(proxy.admin_url + "/readyz") as response:
                body = await response.json()
            assert response.status == 503
            assert body["problems"] == ["gRPC upstream 127.0.0.1:1 not reachable"]


async def test_stop_lets_calls_in_flight_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g:
        stop, ready = asyncio.Event(), asyncio.get_running_loop().create_future()
        settings = g.proxy.runtime.settings  # a second proxy on the same model server

        def on_ready(runtime: Runtime, data: int, admin: int) -> None:
            assert runtime.grpc is not None
            ready.set_result(f"127.0.0.1:{runtime.grpc.port}")

        server = asyncio.create_task(serve(settings, stop, on_ready, handle_signals=False))
        target = await ready
        slow = asyncio.create_task(infer(target, rows(sleep=0.5), [("x-request-id", "late")]))
        await eventually(lambda: any(m.get("x-request-id") == "late" for m in g.model.metadata))
        stop.set()
        answer, initial, _ = await slow  # finished within the drain timeout
        assert answer.model_name == "echo" and initial["x-guard-decision"] == "1,0"
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(target, rows())
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        await server


def test_the_grpc_flags_without_grpcio_are_a_clear_startup_error(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['grpc'] = None\n"  # as if grpcio were not installed
        "from guardproxy.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = [
        "serve", "--upstream", "http://127.0.0.1:9", "--listen", "127.0.0.1:0",
        "--admin", "127.0.0.1:0", "--samples", str(tmp_path),
        "--grpc-listen", "127.0.0.1:0", "--grpc-upstream", "127.0.0.1:9",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "--grpc-listen needs grpcio" in done.stderr
    assert "pip install 'guardproxy[grpc]'" in done.stderr


async def test_calls_past_grpc_max_calls_are_refused_before_they_are_read(tmp_path: Path) -> None:
    async with guarded(tmp_path, grpc_max_calls=1) as g:
        held = asyncio.create_task(infer(g.target, rows(hold="1")))
        await eventually(lambda: g.model.holding == 1)
        with pytest.raises(aio.AioRpcError) as raised:  # another model: the bound is the port's
            await infer(g.target, rows("plain"))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        g.model.gate.set()
        answer, _, _ = await held
        assert answer.model_name == "echo"
