"""`guardproxy serve --workers N`: N processes, each with its own event loop, on one data port.

The supervisor forks the workers before it runs anything else, forwards SIGTERM, SIGINT and
SIGHUP to them, and exits when they all have. Each worker binds the data port with
SO_REUSEPORT, so the kernel spreads connections across them; worker i serves the admin API
on the admin port + i (port 0: each picks its own). Worker 0 alone serves the gRPC port, if
one is configured. Without a configured decision key and with the memory state, the
supervisor generates the key the workers share: a client must not get another randomized
decision by reaching another worker. A worker that dies on its own stops the others, and the
supervisor exits 1, so the container restarts as a whole.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import socket
import sys
from types import FrameType

from guardproxy.eventloop import run_async
from guardproxy.logs import stop_logging
from guardproxy.policy.problems import PolicyError
from guardproxy.settings import PortUnavailable, Settings

log = logging.getLogger("guardproxy.workers")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound (never listening) SO_REUSEPORT socket: port 0 becomes one port for all workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, int(sock.getsockname()[1])


def worker_settings(settings: Settings, index: int, port: int) -> Settings:
    """Worker `index`'s settings: the shared data port, its own admin port, gRPC on worker 0."""
    admin_host, admin_port = settings.admin
    admin = (admin_host, admin_port + index if admin_port else 0)
    listen = (settings.listen[0], port)
    worker = dataclasses.replace(settings, worker=index, admin=admin, listen=listen)
    if index > 0:  # a gRPC port is bound by one process (its server refuses SO_REUSEPORT)
        worker = dataclasses.replace(worker, grpc_listen=None, grpc_upstream=None)
    return worker


def run_worker(settings: Settings) -> int:
    """One worker's life: serve until told to stop (in a forked child)."""
    from guardproxy.app import serve

    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    try:
        run_async(serve(settings))
    except PolicyError as exc:  # the operator's files, not a defect: the problems, no traceback
        log.error(
            "worker %d: the policies do not load, so nothing is served:\n%s", settings.worker, exc
        )
        return 1
    except PortUnavailable as exc:  # the admin port of worker i is port + i: it may be taken
        log.error("worker %d: %s", settings.worker, exc)
        return 1
    except BaseException:
        log.exception("worker %d failed", settings.worker)
        return 1
    finally:
        stop_logging()  # the child leaves by os._exit: no atexit writes its last lines
    return 0


class Supervisor:
    """Forks the workers, forwards signals to them, and collects their exit statuses."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self.failed = False

    def start(self, reserved: socket.socket, port: int) -> None:
        """Fork every worker; only the parent returns."""
        for index in range(self.settings.workers):
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                reserved.close()
                os._exit(run_worker(worker_settings(self.settings, index, port)))
            self.children[pid] = index

    def forward(self, sig: int, frame: FrameType | None = None) -> None:
        """Pass a signal on to every worker still running."""
        if sig != signal.SIGHUP:
            self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue

    def wait(self) -> int:
        """Until every worker has exited: 0 when all stopped cleanly after a signal."""
        while self.children:
            pid, status = os.waitpid(-1, 0)
            index = self.children.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code != 0 or not self.stopping:
                self.failed = True
                log.error("worker %d (pid %d) exited with %d", index, pid, code)
                if not self.stopping:
                    self.forward(signal.SIGTERM)
        return 1 if self.failed else 0


def shared_decision_key(settings: Settings) -> Settings:
    """The settings with one decision key for every worker when nothing else would share one.

    A configured key, or a state backend (which shares a generated key), is left alone.
    """
    if settings.decision_key is not None or settings.state != "memory":
        return settings
    return dataclasses.replace(
        settings,
        decision_key=secrets.token_hex(32),
        decision_key_source="generated by the supervisor, shared by its workers",
    )


def run_workers(settings: Settings) -> int:
    """Run `settings.workers` workers on one data port until a signal stops them."""
    settings = shared_decision_key(settings)
    try:
        reserved, port = reserve_port(*settings.listen)
    except OSError as exc:
        raise SystemExit(
            f"guardproxy serve: {PortUnavailable.of('--listen', settings.listen, exc)}"
        ) from None
    supervisor = Supervisor(settings)
    try:
        for sig in FORWARDED:  # before forking: a signal never finds a worker unwatched
            signal.signal(sig, supervisor.forward)
        supervisor.start(reserved, port)
        return supervisor.wait()
    finally:
        reserved.close()
