"""`python -m bench.instructions`: user-space instructions per request, counted by callgrind.

CPU time per request moves by tens of percent on a shared virtual machine (steal, cache
neighbours, slow cross-CPU wake-ups); the number of instructions a server executes for the
same requests barely moves. Each target's server runs under `valgrind --tool=callgrind`
(some 50 times slower), takes a warm-up load, rests, then takes a measured load at a few
connections. Its instruction counters, read from the live process with `callgrind_control
-e`, give the instructions per request, less what it runs a second when idle (its timers,
counted while it rests) times the seconds of the load. The kernel's work (system calls, the
network stack) is not counted: it is most of nginx's cost, so compare the Python targets
with one another, and two versions of the same code, rather than with nginx.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .layout import Layout, make_layout
from .load import choose
from .nginx import find_nginx
from .processes import Service, process_tree
from .run import bodies_of, probe, start, stop
from .targets import Target, parse_targets, services_for

DEFAULT_TARGETS = "d,e,f"
_COUNTER = re.compile(rb"^\s*Th\s+\d+\s+([\d,]+)", re.MULTILINE)


def options(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    p.add_argument("--targets", default=DEFAULT_TARGETS, help="e.g. b,d,e,f (see README)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of the measured load")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds of load first, discarded")
    p.add_argument("--connections", type=int, default=4, help="concurrent connections")
    p.add_argument("--idle", type=float, default=3.0, help="seconds without load, subtracted")
    p.add_argument("--rows", type=int, default=1000, help="distinct Adult rows the requests rotate")
    opts = p.parse_args(argv)
    if opts.duration <= 0 or opts.connections < 1:
        p.error("--duration and --connections must be positive")
    return opts


def counted(report: bytes) -> int:
    """The instructions of every thread in a `callgrind_control -e` report."""
    return sum(int(n.replace(b",", b"")) for n in _COUNTER.findall(report))


def instructions(service: Service) -> int:
    """The instructions every thread of the service's callgrind processes has executed."""
    total = 0
    for pid in process_tree(service.pid):
        done = subprocess.run(
            ["callgrind_control", "-e", str(pid)], capture_output=True, check=False
        )
        total += counted(done.stdout)
    return total


def idle_rate(service: Service, seconds: float) -> float:
    """Instructions a second with no request: its timers, which the loaded run subtracts."""
    before = instructions(service)
    time.sleep(seconds)
    return (instructions(service) - before) / seconds


def under_callgrind(service: Service) -> Service:
    """The same service run by callgrind (children too: nginx's worker is one)."""
    argv = ["valgrind", "--tool=callgrind", "--trace-children=yes",
            "--callgrind-out-file=/dev/null", *service.argv]  # fmt: skip
    return replace(service, argv=argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every target in turn and print instructions per request."""
    opts = options(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (with callgrind_control) is not installed", file=sys.stderr)
        return 2
    layout = make_layout("split")
    targets = parse_targets(opts.targets, find_nginx() is not None)
    print(f"# python -m bench.instructions {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {opts.connections} connections: {opts.warmup:g} s warm-up, {opts.idle:g} s idle, "
          f"{opts.duration:g} s measured")  # fmt: skip
    print(f"{'target':<22} {'requests':>9} {'instructions/request':>22}")
    for target in targets:
        requests, per_request = measure(target, opts, layout)
        print(f"{target.name:<22} {requests:>9} {per_request:>22,.0f}", flush=True)
    return 0


def measure(target: Target, opts: argparse.Namespace, layout: Layout) -> tuple[int, float]:
    """One target: its services, the measured one under callgrind; requests and instructions."""
    with tempfile.TemporaryDirectory(prefix="guardproxy-instr-") as tmp:
        services = services_for([target], layout, Path(tmp))
        services[target.service] = measured = under_callgrind(services[target.service])
        (Path(tmp) / "load").mkdir()
        load = choose("auto", bodies_of(target.kind, opts.rows), Path(tmp) / "load", frozenset())
        url = f"http://127.0.0.1:{measured.port}{target.path}"
        try:
            start(services, timeout=300.0)  # callgrind takes a minute to start a server
            probe([target], services)
            load.run(url, opts.connections, opts.warmup)
            idle = idle_rate(measured, opts.idle)
            before = instructions(measured)
            done = load.run(url, opts.connections, opts.duration)
            used = instructions(measured) - before - idle * done.seconds
        finally:
            stop(services)
    if done.errors or not done.requests:
        raise SystemExit(f"{target.name}: {done.errors} errors in {done.requests} requests")
    return done.requests, used / done.requests


if __name__ == "__main__":
    raise SystemExit(main())
