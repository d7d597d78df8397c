"""Child processes of a run: start pinned to CPUs, wait until they answer, read their CPU time."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpus: frozenset[int]) -> None:
    """Pin the calling process to `cpus` (no-op for an empty set); for preexec hooks."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, dict[str, str]]:
    """GET 127.0.0.1:port/path; the status and the response headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


def post(
    port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    """POST a body (JSON unless headers say) to 127.0.0.1:port/path; status and headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        conn.request("POST", path, body, headers or {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


@dataclass
class Service:
    """One server process of the benchmark, listening on `port`, answering GET `ready_path`."""

    name: str
    argv: Sequence[str]
    port: int
    cpus: frozenset[int] = frozenset()
    ready_path: str = "/ping"
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Spawn the process, pinned before it runs anything."""
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115
        cpus = self.cpus
        self.process = subprocess.Popen(
            list(self.argv), stdout=out, stderr=subprocess.STDOUT, preexec_fn=lambda: pinned(cpus)
        )

    @property
    def pid(self) -> int:
        """The process id (the service must be started)."""
        if self.process is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.process.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until GET ready_path answers 200; raise with the log's tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                if get(self.port, self.ready_path, timeout=1.0)[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not become ready on :{self.port}\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the process wrote, for error messages."""
        if self.log is None or not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and all its descendants."""
        return sum(process_cpu_seconds(pid) for pid in process_tree(self.pid))

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process from /proc/<pid>/stat (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(pid: int) -> list[int]:
    """The pid and the pids of all its descendants (nginx's workers, for one)."""
    tree = [pid]
    for parent in tree:
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                tree.extend(int(child) for child in children.read_text().split())
            except OSError:
                continue
    return tree
