"""Load generators behind one interface: wrk (with a Lua script for POST bodies) or Python."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .processes import pinned

LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {{ {bodies} }}
local headers = {{ {headers} }}
local i = 0
request = function()
    i = i % #bodies + 1
    return wrk.format(nil, nil, headers[i], bodies[i])
end
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        '\\n{{"requests": %d, "seconds": %f, "errors": %d, "p50_ms": %f, "p99_ms": %f}}\\n',
        summary.requests, summary.duration / 1e6,
        e.connect + e.read + e.write + e.status + e.timeout,
        latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
"""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load run measured."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Body:
    """One request body and the headers it needs besides Content-Type: application/json."""

    data: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def all_headers(self) -> dict[str, str]:
        """Every header to send with it."""
        return {"Content-Type": "application/json", **dict(self.headers)}


class LoadGenerator(Protocol):
    """Runs POST load against one URL at a fixed concurrency for a fixed duration."""

    name: str

    def run(self, url: str, connections: int, duration: float) -> LoadResult:
        """Load `url` with `connections` concurrent connections for `duration` seconds."""
        ...


def parse_result(stdout: str) -> LoadResult:
    """The JSON line a generator prints last."""
    line = next(
        (x for x in reversed(stdout.splitlines()) if x.startswith("{")), None
    )  # fmt: skip
    if line is None:
        raise RuntimeError(f"the load generator printed no result:\n{stdout[-2000:]}")
    doc = json.loads(line)
    return LoadResult(
        int(doc["requests"]), float(doc["seconds"]), int(doc["errors"]),
        float(doc["p50_ms"]), float(doc["p99_ms"]),
    )  # fmt: skip


def run_pinned(argv: list[str], cpus: frozenset[int], timeout: float) -> str:
    """Run a generator pinned to `cpus`; its stdout, or an error naming its stderr."""
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, preexec_fn=lambda: pinned(cpus),
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def lua_string(text: str) -> str:
    """A Lua long-bracket literal that cannot be closed by the text inside it."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def lua_bytes(data: bytes) -> str:
    """A quoted Lua string holding any bytes (a long bracket would rewrite line ends)."""
    plain = {b for b in range(32, 127)} - {ord('"'), ord("\\")}
    return '"' + "".join(chr(b) if b in plain else f"\\{b:03d}" for b in data) + '"'


def lua_request(body: Body) -> tuple[str, str]:
    """A body and its headers table as Lua literals (printable text as long brackets)."""
    text = body.data.decode("latin-1")
    # A long bracket rewrites line ends, so binary that happens to be ASCII is quoted too.
    literal = lua_string(text) if text.isascii() and text.isprintable() else lua_bytes(body.data)
    headers = ", ".join(f"[{lua_bytes(k.encode())}] = {lua_bytes(v.encode())}"
                        for k, v in body.all_headers().items())  # fmt: skip
    return literal, "{" + headers + "}"


class Wrk:
    """wrk, one thread, the given connections; bodies rotate per request."""

    name = "wrk"

    def __init__(self, bodies: list[Body], workdir: Path, cpus: frozenset[int]) -> None:
        self.executable = shutil.which("wrk") or "wrk"
        self.cpus = cpus
        self.script = workdir / "post.lua"
        literals = [lua_request(b) for b in bodies]
        self.script.write_text(LUA.format(bodies=", ".join(b for b, _ in literals),
                                          headers=", ".join(h for _, h in literals)))  # fmt: skip

    def run(self, url: str, connections: int, duration: float) -> LoadResult:
        """One wrk run (whole seconds, wrk's unit); latency percentiles from wrk's histogram."""
        argv = [
            self.executable, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
            "--timeout", "5s", "-s", str(self.script), url,
        ]  # fmt: skip
        return parse_result(run_pinned(argv, self.cpus, duration + 30))


class PythonLoad:
    """The aiohttp load generator (bench.loadgen) in its own process."""

    name = "python"

    def __init__(self, bodies: list[Body], workdir: Path, cpus: frozenset[int]) -> None:
        self.cpus = cpus
        self.bodies = workdir / "bodies.jsonl"
        lines = [json.dumps({"body": b.data.hex(), "headers": b.all_headers()}) for b in bodies]
        self.bodies.write_text("\n".join(lines) + "\n")

    def run(self, url: str, connections: int, duration: float) -> LoadResult:
        """One run of `python -m bench.loadgen`."""
        argv = [
            sys.executable, "-m", "bench.loadgen", url, "--connections", str(connections),
            "--duration", str(duration), "--bodies", str(self.bodies),
        ]  # fmt: skip
        return parse_result(run_pinned(argv, self.cpus, duration + 30))


def wrk_available() -> bool:
    """Whether wrk is installed."""
    return shutil.which("wrk") is not None


def choose(kind: str, bodies: list[Body], workdir: Path, cpus: frozenset[int]) -> LoadGenerator:
    """The generator named `kind`: wrk, python, or auto (wrk when installed)."""
    if kind == "auto":
        kind = "wrk" if wrk_available() else "python"
    if kind == "wrk":
        if not wrk_available():
            raise SystemExit("--load wrk: wrk is not installed")
        return Wrk(bodies, workdir, cpus)
    if kind == "python":
        return PythonLoad(bodies, workdir, cpus)
    raise SystemExit(f"--load: unknown load generator {kind!r} (auto | wrk | python)")
