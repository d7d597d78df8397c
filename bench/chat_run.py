"""`python -m bench.chat_run`: the CPU a streamed chat token costs, guarded and not.

The bench upstream streams an OpenAI chat answer of `--events` one-word events (then the
finish event and `data: [DONE]`). wrk asks for it at `--connections` through each target in
interleaved rounds: straight to the upstream, through nginx (when installed), and through one
`guardproxy serve` on a path outside its policy (streamed through unread) and on the chat
model's route (every event parsed and scanned for the policy's deny terms, the text kept for
the sample). CPU time per request over the events per request gives the cost of an event.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .layout import Layout, make_layout
from .load import Body, choose
from .nginx import find_nginx, nginx_argv, write_config
from .processes import Service, free_port, pinned, post
from .targets import python, upstream
from .upstream import CHAT_PATH

POLICY = """region: default
models:
  - name: chat
    protocol: openai
    routes: ["/v1/chat/completions"]
labels: {deny: [%s], action: block}
sampling: {rate: 0.01}
"""
TERMS = ("gorilla", "bomb", "weapon", "new york", "kill", "attack", "hate", "drug")


def options(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.chat_run", description=__doc__)
    p.add_argument("--events", type=int, default=100, help="token events a streamed answer")
    p.add_argument("--duration", type=float, default=3.0, help="seconds of each measured run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--load", default="auto", help="auto | wrk | python")
    opts = p.parse_args(argv)
    if opts.events < 1 or opts.rounds < 1 or opts.duration <= 0:
        p.error("--events, --rounds and --duration must be positive")
    return opts


def services(workdir: Path, layout: Layout) -> tuple[Service, dict[str, tuple[Service, str]]]:
    """The upstream, and each target's service and path."""
    behind = upstream("upstream", layout.upstream, workdir)
    policies = workdir / "policies"
    policies.mkdir()
    (policies / "default.yaml").write_text(POLICY % ", ".join(TERMS))
    port, url = free_port(), f"http://127.0.0.1:{behind.port}"
    argv = python(
        "guardproxy.cli", "serve", "--upstream", url, "--listen", f"127.0.0.1:{port}",
        "--admin", f"127.0.0.1:{free_port()}", "--policies", str(policies),
        "--log-level", "WARNING", "--samples", str(workdir / "samples"),
    )  # fmt: skip
    proxy = Service("guardproxy", argv, port, layout.server, log=workdir / "guardproxy.log")
    targets = {
        "direct": (behind, CHAT_PATH),
        "guardproxy-unguarded": (proxy, "/unguarded" + CHAT_PATH),
        "guardproxy-guarded": (proxy, CHAT_PATH),
    }
    nginx = find_nginx()
    if nginx is not None:
        prefix, nport = workdir / "nginx", free_port()
        conf = write_config(prefix, nport, behind.port)
        service = Service("nginx", nginx_argv(nginx, prefix, conf), nport, layout.server)
        targets["nginx"] = (service, CHAT_PATH)
    return behind, targets


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds; print CPU µs per request and per event, with ratios to nginx."""
    opts = options(argv)
    layout = make_layout("split")
    body = json.dumps({"model": "m", "stream": True, "max_tokens": opts.events,
                       "messages": [{"role": "user", "content": "tell me"}]}).encode()  # fmt: skip
    cpu: dict[str, list[float]] = {}
    errors = 0
    with tempfile.TemporaryDirectory(prefix="guardproxy-chat-") as tmp:
        workdir = Path(tmp)
        behind, targets = services(workdir, layout)
        started = {id(s): s for s, _ in targets.values()} | {id(behind): behind}
        pinned(layout.load)
        load = choose(opts.load, [Body(body)], workdir, layout.load)
        try:
            for service in started.values():
                service.start()
            for service in started.values():
                service.wait_ready()
            probe(targets, body)
            for _ in range(opts.rounds):
                for name, (service, path) in targets.items():
                    url = f"http://127.0.0.1:{service.port}{path}"
                    load.run(url, opts.connections, 1.0)
                    before = service.cpu_seconds()
                    result = load.run(url, opts.connections, opts.duration)
                    spent = service.cpu_seconds() - before
                    errors += result.errors
                    cpu.setdefault(name, []).append(spent / max(1, result.requests) * 1e6)
        finally:
            for service in started.values():
                service.stop()
    report(cpu, opts)
    return 1 if errors else 0


def probe(targets: dict[str, tuple[Service, str]], body: bytes) -> None:
    """Each target answers 200; the guarded one as the chat model (its head says so)."""
    for name, (service, path) in targets.items():
        status, headers = post(service.port, path, body)
        guarded = {k.lower(): v for k, v in headers.items()}.get("x-guard-model") == "chat"
        if status != 200 or guarded != (name == "guardproxy-guarded"):
            raise SystemExit(f"{name}: {status}, X-Guard-Model {'set' if guarded else 'absent'}")


def report(cpu: dict[str, list[float]], opts: argparse.Namespace) -> None:
    """One line a target: median CPU µs per request and per event, and the ratio to nginx."""
    print(f"# python -m bench.chat_run --events {opts.events} --rounds {opts.rounds} "
          f"--duration {opts.duration:g} --connections {opts.connections}")  # fmt: skip
    print(f"{'target':<22}{'CPU µs/request':>16}{'µs/event':>10}{'±%':>6}{'/ nginx':>9}")
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    nginx = medians.get("nginx")
    for name, values in cpu.items():
        spread = (max(values) - min(values)) / medians[name] * 100 if medians[name] else 0.0
        ratio = f"{medians[name] / nginx:9.2f}" if nginx else f"{'-':>9}"
        print(f"{name:<22}{medians[name]:16.0f}{medians[name] / opts.events:10.2f}"
              f"{spread:6.0f}{ratio}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
