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
from guardproxy.payloads.binary import HEADER, BinaryBody, encode

from .layout import LAYOUTS, Layout, make_layout
from .load import Body, LoadGenerator, choose
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
    p.add_argument("--rows", type=int, default=ROWS, help="distinct Adult rows the requests rotate")
    p.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    p.add_argument("--quick", action="store_true", help="1 round of ~1 s runs (CI smoke)")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.duration, opts.warmup, opts.rounds = 1.0, 0.5, 1
    opts.serial_duration = opts.serial_duration or opts.duration
    if opts.rounds < 1 or opts.duration <= 0 or opts.connections < 1:
        p.error("--rounds, --duration and --connections must be positive")
    return opts


# Sampling is keyed on the body: with few distinct rows the share sampled is a multiple of
# 1/rows (1 of 8 rows: 12.5%) instead of the policy's rate, and it changes with the decision key.
ROWS = 1000


def request_documents(count: int) -> list[dict[str, Any]]:
    """Single-row KServe v2 requests for the first `count` rows of the bundled Adult subset."""
    docs = []
    for raw in adult_rows():
        raw.pop("income", None)
        docs.append(v2_request([raw]))
        if len(docs) >= count:
            break
    return docs


def request_bodies(count: int) -> list[bytes]:
    """The requests as JSON bodies."""
    return [dumps(doc) for doc in request_documents(count)]


def binary_bodies(count: int) -> list[Body]:
    """The same requests in the binary tensor extension, every input and output binary."""
    bodies = []
    for doc in request_documents(count):
        outputs = [{"name": n, "parameters": {"binary_data": True}} for n in ("score", "label")]
        encoded = encode(BinaryBody({**doc, "outputs": outputs}, "inputs"))
        headers = (("Content-Type", "application/octet-stream"),
                   (HEADER, str(encoded.header_length)))  # fmt: skip
        bodies.append(Body(encoded.body, headers))
    return bodies


def bodies_of(kind: str, count: int) -> list[Body]:
    """The requests a target of this kind gets."""
    if kind == "binary":
        return binary_bodies(count)
    return [Body(data) for data in request_bodies(count)]


Loads = dict[str, LoadGenerator]  # by the kind of requests they send


def measure(target: Target, service: Service, loads: Loads, opts: Any, n: int) -> Sample:
    """Warm up, load at full concurrency (CPU of the server counted), then serially."""
    url = f"http://127.0.0.1:{service.port}{target.path}"
    load = loads[target.kind]
    load.run(url, opts.connections, opts.warmup)
    before = service.cpu_seconds()
    loaded = load.run(url, opts.connections, opts.duration)
    cpu = service.cpu_seconds() - before
    serial = load.run(url, 1, opts.serial_duration)
    per_request = cpu / loaded.requests * 1e6 if loaded.requests else 0.0
    return Sample(target.name, n, loaded.rps, loaded.errors + serial.errors, per_request,
                  serial.p50_ms, serial.p99_ms)  # fmt: skip


def probe(targets: list[Target], services: dict[str, Service]) -> dict[str, Any]:
    """One request per target: each must answer 200; note whether guards annotated the answer."""
    notes: dict[str, Any] = {}
    for target in targets:
        body = bodies_of(target.kind, 1)[0]
        port = services[target.service].port
        status, headers = post(port, target.path, body.data, body.all_headers())
        if status != 200:
            raise RuntimeError(f"target {target.name} answered {status} to the probe")
        notes[target.name] = {"guard_decision": headers.get("X-Guard-Decision")}
    return notes


def rounds(targets: list[Target], services: dict[str, Service], loads: Loads,
           opts: Any) -> list[Sample]:  # fmt: skip
    """Every target once per round, round after round, so drift hits all alike."""
    samples = []
    for n in range(opts.rounds):
        for target in targets:
            sample = measure(target, services[target.service], loads, opts, n)
            print(f"round {n + 1}/{opts.rounds} {target.name}: {sample.rps:.0f} req/s",
                  file=sys.stderr, flush=True)  # fmt: skip
            samples.append(sample)
    return samples


def start(services: dict[str, Service], timeout: float = 20.0) -> None:
    """Start every service, then wait (up to `timeout` seconds each) for each to answer."""
    for service in services.values():
        service.start()
    for service in services.values():
        service.wait_ready(timeout)


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
    own = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="guardproxy-bench-") as tmp:
        services = services_for(targets, layout, Path(tmp))
        loads: Loads = {}
        for kind in dict.fromkeys(t.kind for t in targets):
            (Path(tmp) / kind).mkdir()
            bodies = bodies_of(kind, opts.rows)
            loads[kind] = choose(opts.load, bodies, Path(tmp) / kind, layout.load)
        try:
            pinned(layout.load)  # this process only waits, but keep it off the server's CPU
            start(services)
            notes = probe(targets, services)
            samples = rounds(targets, services, loads, opts)
        finally:
            stop(services)
            os.sched_setaffinity(0, own)
    return metadata(opts, layout, next(iter(loads.values())), notes), samples


def unguarded_note(notes: dict[str, Any]) -> str | None:
    """A warning when a guarded target answered without a guard decision header."""
    for name in ("guardproxy-guarded", "guardproxy-binary"):
        probe = notes.get(name)
        if probe is not None and probe["guard_decision"] in (None, "unscored"):
            return f"# note: {name} answered without a decision (no guard chain ran or decided)"
    return None


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
