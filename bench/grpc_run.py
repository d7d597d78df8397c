"""`python -m bench.grpc_run`: OIP gRPC ModelInfer direct to the model server vs through
guardproxy's gRPC port, for a model the embedded default policy does not declare (decoded,
passed unguarded) and for the one it guards ("adult": groups, decision, sampling, monitors).

Interleaved rounds, medians; the load generator (bench.grpc_load) and the server under test
pinned to separate CPUs as bench.run's `split` layout does. CPU per request is the server's:
the model server's for `grpc-direct`, guardproxy's process for `grpc-guarded`.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .layout import make_layout
from .processes import Service, free_port, get, pinned


def wait_port(service: Service, timeout: float = 30.0) -> None:
    """Block until the service accepts TCP connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", service.port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{service.name} is not listening on :{service.port}\n{service.log_tail()}")


def start(workdir: Path, cpus: Any) -> tuple[Service, Service, Service, int]:
    """The gRPC model server, an HTTP one (serve needs it) and guardproxy before both."""
    python = [sys.executable, "-m"]
    model = Service("grpc-model", [*python, "bench.grpc_upstream", "--port", str(free_port())],
                    0, cpus.upstream, log=workdir / "grpc-model.log")  # fmt: skip
    model.port = int(model.argv[-1])
    http = Service("http-model", [*python, "bench.upstream", "--port", str(free_port())], 0,
                   cpus.upstream, log=workdir / "http-model.log")  # fmt: skip
    http.port = int(http.argv[-1])
    admin, grpc_port = free_port(), free_port()
    proxy = Service(
        "guardproxy",
        [*python, "guardproxy.cli", "serve", "--upstream", f"http://127.0.0.1:{http.port}",
         "--listen", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{admin}",
         "--samples", str(workdir / "samples"), "--log-level", "WARNING",
         "--grpc-listen", f"127.0.0.1:{grpc_port}", "--grpc-upstream", f"127.0.0.1:{model.port}"],
        admin, cpus.server, ready_path="/readyz", log=workdir / "guardproxy.log",
    )  # fmt: skip
    for service in (model, http):
        service.start()
        wait_port(service)
    proxy.start()
    proxy.wait_ready()
    return model, http, proxy, grpc_port


def load(
    target: str, model: str, connections: int, seconds: float, opts: Any, cpus: Any
) -> dict[str, Any]:
    """One run of bench.grpc_load, pinned to the load CPUs; its JSON summary."""
    argv = [sys.executable, "-m", "bench.grpc_load", target, "--connections", str(connections),
            "--duration", str(seconds), "--rows", str(opts.rows), "--model", model]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=True,
                          preexec_fn=lambda: pinned(cpus.load))  # fmt: skip
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def measure(
    name: str, target: str, model: str, server: Service, opts: Any, cpus: Any
) -> dict[str, Any]:
    """Warm-up, a loaded run (the server's CPU counted), then a serial run for latency."""
    load(target, model, opts.connections, opts.warmup, opts, cpus)
    before = server.cpu_seconds()
    loaded = load(target, model, opts.connections, opts.duration, opts, cpus)
    cpu = server.cpu_seconds() - before
    serial = load(target, model, 1, opts.duration, opts, cpus)
    return {
        "target": name,
        "rps": loaded["requests"] / loaded["seconds"],
        "cpu_us": cpu / loaded["requests"] * 1e6 if loaded["requests"] else 0.0,
        "p50_ms": serial["p50_ms"], "p99_ms": serial["p99_ms"],
        "errors": loaded["errors"] + serial["errors"],
    }  # fmt: skip


def table(samples: list[dict[str, Any]]) -> str:
    """Medians per target as a Markdown table, with the guarded/direct ratios."""
    names = list(dict.fromkeys(s["target"] for s in samples))
    keys = ("rps", "cpu_us", "p50_ms", "p99_ms", "errors")
    med = {
        n: {k: statistics.median(s[k] for s in samples if s["target"] == n) for k in keys}
        for n in names
    }
    direct = med[names[0]]
    lines = ["| target | req/s | vs direct | p50 / p99 ms (1 channel) | CPU µs/request | errors |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for n in names:
        m = med[n]
        lines.append(f"| {n} | {m['rps']:,.0f} | {m['rps'] / direct['rps']:.2f} | "
                     f"{m['p50_ms']:.2f} / {m['p99_ms']:.2f} | {m['cpu_us']:.0f} | "
                     f"{m['errors']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both targets in interleaved rounds; print the table; exit 1 on any failed call."""
    p = argparse.ArgumentParser(prog="python -m bench.grpc_run", description=__doc__)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32, help="concurrent channels")
    p.add_argument("--rows", type=int, default=8, help="distinct Adult rows the calls rotate")
    opts = p.parse_args(argv)
    cpus = make_layout("split")
    with tempfile.TemporaryDirectory(prefix="guardproxy-grpc-bench-") as tmp:
        model, http, proxy, grpc_port = start(Path(tmp), cpus)
        try:
            assert get(proxy.port, "/readyz")[0] == 200
            samples = []
            direct, port = f"127.0.0.1:{model.port}", f"127.0.0.1:{grpc_port}"
            runs = [("grpc-direct", direct, "adult", model),
                    ("grpc-unguarded", port, "undeclared", proxy),
                    ("grpc-guarded", port, "adult", proxy)]  # fmt: skip
            for _ in range(opts.rounds):
                for name, target, model_name, server in runs:
                    samples.append(measure(name, target, model_name, server, opts, cpus))
            guards = grpc_guards(proxy.port)
        finally:
            for service in (proxy, http, model):
                service.stop()
    print(cpus.describe())
    print(table(samples))
    print(f"guardproxy gRPC guards: {json.dumps(guards)}")
    return 1 if any(s["errors"] for s in samples) else 0


def grpc_guards(admin: int) -> dict[str, Any]:
    """What guardproxy's /status says its gRPC guards did."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5) as response:
        guards = json.load(response)["grpc"]["guards"]
    return {k: guards[k] for k in ("guarded", "unguarded", "failures", "blocked")}


if __name__ == "__main__":
    sys.exit(main())
