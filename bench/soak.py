"""`python -m bench.soak`: a million guarded requests, each with its own request id.

guardproxy's resident memory is read every 100,000 requests: whatever a request leaves behind
(ids, records, samples, metric series) shows up as growth. The embedded memory state keeps
up to 200,000 prediction records for the label join in arrays allocated when it starts, so
memory should stay flat from the first reading on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .layout import make_layout
from .load import LUA, lua_string, parse_result, run_pinned
from .processes import Service, free_port, pinned
from .run import ROWS, request_bodies
from .targets import python, upstream
from .upstream import GUARDED_PATH

# Each request gets X-Request-Id "<run>-<chunk>-<n>": unique over the whole soak.
UNIQUE = LUA.replace(
    "local i = 0\nrequest = function()\n    i = i % #bodies + 1\n"
    "    return wrk.format(nil, nil, headers[i], bodies[i])\nend",
    'local i = 0\nlocal prefix = "soak"\ninit = function(args) prefix = args[1] end\n'
    "request = function()\n    i = i + 1\n"
    '    local headers = {{["Content-Type"] = "application/json",'
    ' ["X-Request-Id"] = prefix .. "-" .. i}}\n'
    "    return wrk.format(nil, nil, headers, bodies[i % #bodies + 1])\nend",
)

assert UNIQUE != LUA, "bench.load's Lua script changed: update the soak's request()"


@dataclass(frozen=True, slots=True)
class Point:
    """guardproxy after `requests` requests."""

    requests: int
    rss_mib: float
    errors: int
    loop_lag_max_ms: float
    records: int
    dropped: int  # observations the monitors could not take (their queue was full)
    loop_ticks: int = 0  # of the 25 ms ticker, since start
    loop_ticks_over_5ms: int = 0
    # Of the longest tick so far: the share of its time the loop's thread was on the CPU
    # (near 1: the loop itself was busy; near 0: something else had the CPU).
    loop_lag_max_busy: float = 0.0
    # Of the wall time of the chunk before this reading: the share the loop's thread was
    # ready to run but waited for a CPU (the machine's doing, not guardproxy's).
    cpu_wait: float = 0.0
    gc_longest_ms: float = 0.0  # the longest garbage collection so far, its CPU time


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_wait_seconds(pid: int) -> float:
    """Seconds the process's main thread has waited, ready to run, for a CPU (schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def status(admin_port: int) -> dict[str, Any]:
    """guardproxy's /status."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/status", timeout=5) as r:
        doc: dict[str, Any] = json.load(r)
        return doc


class Soak:
    """Runs wrk in chunks until the total is reached, reading RSS after each chunk."""

    def __init__(self, opts: argparse.Namespace, workdir: Path) -> None:
        self.opts = opts
        self.layout = make_layout("split")
        self.upstream = upstream("upstream", self.layout.upstream, workdir)
        self.admin = free_port()
        url = f"http://127.0.0.1:{self.upstream.port}"
        port = free_port()
        argv = python(
            "guardproxy.cli", "serve", "--upstream", url, "--listen", f"127.0.0.1:{port}",
            "--admin", f"127.0.0.1:{self.admin}", "--log-level", "WARNING",
            "--samples", str(workdir / "samples"),
        )  # fmt: skip
        self.proxy = Service("guardproxy", argv, port, self.layout.server, log=workdir / "gp.log")
        literals = ", ".join(lua_string(b.decode()) for b in request_bodies(opts.rows))
        self.script = workdir / "soak.lua"
        self.script.write_text(UNIQUE.format(bodies=literals, headers=""))
        self.url = f"http://127.0.0.1:{port}{GUARDED_PATH}"
        self.run_id = f"{int(time.time())}"

    def chunk(self, name: str, seconds: float) -> tuple[int, int]:
        """One wrk run; (requests completed, errors)."""
        argv = [
            shutil.which("wrk") or "wrk", "-t1", f"-c{self.opts.connections}",
            f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(self.script), self.url,
            "--", f"{self.run_id}-{name}",
        ]  # fmt: skip
        result = parse_result(run_pinned(argv, self.layout.load, seconds + 60))
        return result.requests, result.errors

    def point(self, done: int, errors: int, cpu_wait: float) -> Point:
        """Where guardproxy stands now."""
        doc = status(self.admin)
        lag = doc["loop"]["lag"]
        return Point(done, round(rss_mib(self.proxy.pid), 1), errors, lag["max_ms"],
                     doc["fairness"]["recorded"], doc["monitor"]["dropped"],
                     lag["ticks"], lag["over"]["5ms"], lag["max_busy"],
                     round(cpu_wait, 3), max(doc["loop"]["gc"]["longest_cpu_ms"]))  # fmt: skip

    def run(self) -> list[Point]:
        """Chunks of about `every` requests each, until `requests` are done."""
        opts = self.opts
        points: list[Point] = []
        done = errors = 0
        rate = 0.0
        while done < opts.requests:
            target = min(opts.requests, (done // opts.every + 1) * opts.every)
            seconds = (target - done) / rate if rate else 5.0
            began, waited = time.monotonic(), cpu_wait_seconds(self.proxy.pid)
            n, failed = self.chunk(str(len(points)), seconds)
            took = max(0.001, time.monotonic() - began)
            rate = n / took
            done, errors = done + n, errors + failed
            wait = (cpu_wait_seconds(self.proxy.pid) - waited) / took
            points.append(self.point(done, errors, wait))
            print(f"{done:>9,} requests  RSS {points[-1].rss_mib:7.1f} MiB  errors {errors}",
                  file=sys.stderr, flush=True)  # fmt: skip
        return points


def growth(points: list[Point], start: int) -> float | None:
    """RSS growth in % from the first point at or after `start` requests to the last point."""
    base = next((p for p in points if p.requests >= start), None)
    if base is None or base is points[-1]:
        return None
    return (points[-1].rss_mib / base.rss_mib - 1) * 100


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak, print the RSS series, write the JSON; 1 on any failed request."""
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--every", type=int, default=100_000, help="requests between RSS readings")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rows", type=int, default=ROWS)
    p.add_argument(
        "--steady-from",
        type=int,
        default=300_000,
        help="also report growth from here (past the memory state's 200,000-record cap)",
    )
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "soak.json")
    opts = p.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("bench.soak needs wrk")
    with tempfile.TemporaryDirectory(prefix="guardproxy-soak-") as tmp:
        soak = Soak(opts, Path(tmp))
        pinned(soak.layout.load)
        try:
            for service in (soak.upstream, soak.proxy):
                service.start()
            soak.upstream.wait_ready()
            soak.proxy.wait_ready()
            points = soak.run()
        finally:
            soak.proxy.stop()
            soak.upstream.stop()
    report(points, opts)
    return 1 if points[-1].errors else 0


def report(points: list[Point], opts: argparse.Namespace) -> None:
    """The RSS series as a table, then the JSON."""
    print(f"# python -m bench.soak --requests {opts.requests} --every {opts.every}")
    print(f"{'requests':>10}  {'RSS MiB':>8}  {'records':>8}  {'dropped':>8}  "
          f"{'loop lag max ms':>15}  {'busy':>5}  {'ticks >5 ms':>15}  {'CPU wait':>8}  "
          f"{'GC max ms':>9}  errors")  # fmt: skip
    for p in points:
        print(f"{p.requests:>10,}  {p.rss_mib:>8.1f}  {p.records:>8,}  {p.dropped:>8,}  "
              f"{p.loop_lag_max_ms:>15.1f}  {p.loop_lag_max_busy:>5.2f}  "
              f"{f'{p.loop_ticks_over_5ms:,} of {p.loop_ticks:,}':>15}  {p.cpu_wait:>8.1%}  "
              f"{p.gc_longest_ms:>9.1f}  {p.errors}")  # fmt: skip
    change = growth(points, opts.every)
    steady = growth(points, opts.steady_from)
    for start, value in ((opts.every, change), (opts.steady_from, steady)):
        if value is not None:
            print(f"# RSS from the first reading at >= {start:,} requests to the last: "
                  f"{value:+.1f}%")  # fmt: skip
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "points": [asdict(p) for p in points],
        "growth_percent": change,
        "growth_after_record_cap_percent": steady,
    }
    opts.output.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
