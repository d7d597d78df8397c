"""`python -m bench.run`: every target side by side, interleaved rounds, medians and ratios."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import v2_request
from guardproxy.guards.exchange import dumps

from .layout import LAYOUTS, Layout, make_layout
from .load import LoadGenerator, choose
from .nginx import find_nginx
from .processes import Service, pinned, post
from .report import Sample, format_table, summarize, write_json
from .targets import TARGETS, Target, parse_targets, services_for

RESULTS = Path(__file__).parent / "results" / "latest.json"


def options(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; --quick shortens every phase for a smoke run."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each run")
    p.add_argument("--serial-duration", type=float, help="seconds of 1-connection load")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    p.add_argument("--connections", type=int, default=32, help="concurrent connections")
    p.add_argument("--targets", default=",".join(TARGETS), help="e.g. a,b,e (see README)")
    p.add_argument("--load", default="auto", help="auto | wrk | python")
    p.add_argument("--layout", default="split", choices=LAYOUTS, help="CPU pinning layout")
    p.add_argument("--rows", type=int, default=8, help="distinct Adult rows the requests rotate")
    p.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    p.add_argument("--quick", action="store_true", help="1 round of ~1 s runs (CI smoke)")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.duration, opts.warmup, opts.rounds = 1.0, 0.5, 1
    opts.serial_duration = opts.serial_duration or opts.duration
    if opts.rounds < 1 or opts.duration <= 0 or opts.connections < 1:
        p.error("--rounds, --duration and --connections must be positive")
    return opts


def request_bodies(count: int) -> list[bytes]:
    """Single-row KServe v2 requests for the first `count` rows of the bundled Adult subset."""
    bodies = []
    for raw in adult_rows():
        raw.pop("income", None)
        bodies.append(dumps(v2_request([raw])))
        if len(bodies) >= count:
            break
    return bodies


def measure(target: Target, service: Service, load: LoadGenerator, opts: Any, n: int) -> Sample:
    """Warm up, load at full concurrency (CPU of the server counted), then serially."""
    url = f"http://127.0.0.1:{service.port}{target.path}"
    load.run(url, opts.connections, opts.warmup)
    before = service.cpu_seconds()
    loaded = load.run(url, opts.connections, opts.duration)
    cpu = service.cpu_seconds() - before
    serial = load.run(url, 1, opts.serial_duration)
    per_request = cpu / loaded.requests * 1e6 if loaded.requests else 0.0
    return Sample(target.name, n, loaded.rps, loaded.errors + serial.errors, per_request,
                  serial.p50_ms, serial.p99_ms)  # fmt: skip


def probe(targets: list[Target], services: dict[str, Service], body: bytes) -> dict[str, Any]:
    """One request per target: each must answer 200; note whether guards annotated the answer."""
    notes: dict[str, Any] = {}
    for target in targets:
        status, headers = post(services[target.service].port, target.path, body)
        if status != 200:
            raise RuntimeError(f"target {target.name} answered {status} to the probe")
        notes[target.name] = {"guard_decision": headers.get("X-Guard-Decision")}
    return notes


def rounds(targets: list[Target], services: dict[str, Service], load: LoadGenerator,
           opts: Any) -> list[Sample]:  # fmt: skip
    """Every target once per round, round after round, so drift hits all alike."""
    samples = []
    for n in range(opts.rounds):
        for target in targets:
            sample = measure(target, services[target.service], load, opts, n)
            print(f"round {n + 1}/{opts.rounds} {target.name}: {sample.rps:.0f} req/s",
                  file=sys.stderr, flush=True)  # fmt: skip
            samples.append(sample)
    return samples


def start(services: dict[str, Service]) -> None:
    """Start every service, then wait for each to answer."""
    for service in services.values():
        service.start()
    for service in services.values():
        service.wait_ready()


def stop(services: dict[str, Service]) -> None:
    """Stop every service (reverse order: proxies before their upstream)."""
    for service in reversed(list(services.values())):
        service.stop()


def version(argv: list[str]) -> str:
    """The first line a tool prints about its version (nginx prints it on stderr)."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"


def metadata(
    opts: Any, layout: Layout, load: LoadGenerator, notes: dict[str, Any]
) -> dict[str, Any]:
    """What the JSON records about the run besides the numbers."""
    nginx = find_nginx()
    return {
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_generator": load.name, "layout": layout.describe(),
        "connections": opts.connections, "duration": opts.duration, "warmup": opts.warmup,
        "serial_duration": opts.serial_duration, "rounds": opts.rounds,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "nginx": version([nginx, "-v"]) if nginx else None, "probes": notes,
    }  # fmt: skip


def execute(opts: Any) -> tuple[dict[str, Any], list[Sample]]:
    """Start the services, probe, run the rounds, stop; the metadata and every sample."""
    layout = make_layout(opts.layout)
    targets = parse_targets(opts.targets, find_nginx() is not None)
    bodies = request_bodies(opts.rows)
    own = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="guardproxy-bench-") as tmp:
        services = services_for(targets, layout, Path(tmp))
        load = choose(opts.load, bodies, Path(tmp), layout.load)
        try:
            pinned(layout.load)  # this process only waits, but keep it off the server's CPU
            start(services)
            notes = probe(targets, services, bodies[0])
            samples = rounds(targets, services, load, opts)
        finally:
            stop(services)
            os.sched_setaffinity(0, own)
    return metadata(opts, layout, load, notes), samples


def unguarded_note(notes: dict[str, Any]) -> str | None:
    """A warning when the guarded target answered without a guard decision header."""
    probe = notes.get("guardproxy-guarded")
    if probe is None or probe["guard_decision"] is not None:
        return None
    return "# note: guardproxy-guarded answered without X-Guard-Decision (no guard chain ran)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON; 1 when any request failed."""
    opts = options(argv)
    meta, samples = execute(opts)
    rows = summarize(samples)
    print(f"# {meta['command']}\n# load: {meta['load_generator']}, {opts.connections} connections,"
          f" {opts.duration:g} s x {opts.rounds} rounds; layout {meta['layout']}")  # fmt: skip
    print(format_table(rows))
    note = unguarded_note(meta["probes"])
    if note:
        print(note)
    write_json(opts.output, meta, rows, samples)
    print(f"# written to {opts.output}")
    return 1 if any(r.errors for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
