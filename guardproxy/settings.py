"""Runtime settings: flags and their GUARDPROXY_* environment variables, parsed once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from guardproxy.hotpath.upstream import Limits, Timeouts


def parse_address(value: str, default_host: str) -> tuple[str, int]:
    """ "host:port", ":port" or "port" into (host, port)."""
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"not an address: {value!r} (expected HOST:PORT)")
    return (host.strip("[]") or default_host, int(port))


def secret_from_env(name: str) -> str | None:
    """A token from NAME, or from the file named by NAME_FILE (as Kubernetes mounts Secrets)."""
    value = os.environ.get(name)
    if value:
        return value.strip()
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:  # at start there is no last token to keep
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SystemExit(f"guardproxy serve: {name}_FILE: cannot read {path}: {reason}") from None


def secret_file(name: str) -> str | None:
    """The file NAME_FILE names, when it (not NAME itself) holds the token: it is followed."""
    return None if os.environ.get(name) else os.environ.get(f"{name}_FILE") or None


def env_flag(name: str) -> bool:
    """A yes/no environment variable: 1, true, yes or on (any case) mean yes."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `guardproxy serve` is configured with."""

    upstream: str
    listen: tuple[str, int] = ("0.0.0.0", 8080)
    admin: tuple[str, int] = ("127.0.0.1", 9901)
    policies: Path | None = None
    region: str = "default"
    trust_region_header: str | None = None  # a header naming the region; None: --region only
    trust_forwarded: bool = False  # keep a front proxy's X-Forwarded-* headers
    state: str = "memory"
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)  # upstream requests per model, queued
    header_timeout: float = 10.0  # a client's request head must arrive within this
    body_timeout: float = 30.0  # longest silence while a client sends its body
    body_min_rate: float = 1024.0  # bytes/s a body must average after body_timeout; 0: none
    write_timeout: float = 60.0  # longest an answer waits for a client that does not read
    drain_timeout: float = 20.0
    max_body: int = 16 * 1024 * 1024
    max_buffered: int = 256 * 1024 * 1024  # guarded body bytes held at once, both ways
    max_connections: int = 4096  # data port connections open at once; 0: no limit
    max_connections_per_client: int = 0  # of those, from one client address; 0: no limit
    max_rows: int = 10_000  # rows of one guarded request or answer
    poll_interval: float = 2.0
    samples_dir: Path = Path("/tmp/guardproxy-samples")
    admin_token: str | None = None
    feedback_token: str | None = None
    admin_token_file: str | None = None  # re-read when it changes (a rotated Secret)
    feedback_token_file: str | None = None
    decision_key: str | None = None  # keys randomized decisions; shared via the state if None
    decision_key_source: str = "environment"  # where decision_key came from, for /status
    monitor_budget: int = 16 * 1024 * 1024  # bytes of observations waiting for the monitors
    otlp_endpoint: str | None = None
    service_name: str | None = None
    workers: int = 1  # processes sharing the data port (SO_REUSEPORT)
    worker: int = 0  # this process's index among them
    grpc_listen: tuple[str, int] | None = None  # the gRPC port; set with grpc_upstream
    grpc_upstream: str | None = None  # the model server's gRPC HOST:PORT
    grpc_max_calls: int = 0  # gRPC calls at once (0: no bound), refused before being read
    grpc_stream_answers: str = "auto"  # ModelStreamInfer answers: auto, triton or mlserver
    grpc_stream_idle: float = 300.0  # seconds a stream may idle before it ends (0: for good)
    access_log: bool = False  # every request at info level (else at debug)

    def secrets(self) -> tuple[str, ...]:
        """Values that must never be shown: tokens and the decision key."""
        values = (self.admin_token, self.feedback_token, self.decision_key)
        return tuple(v for v in values if v)


class PortUnavailable(RuntimeError):
    """A port the settings name cannot be listened on: in use, no permission, no such address."""

    @classmethod
    def of(cls, flag: str, address: tuple[str, int], exc: OSError) -> PortUnavailable:
        """The error for `flag`'s address, with the system's reason."""
        host, port = address
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # servers reword strerror
        return cls(f"{flag}: cannot listen on {host}:{port}: {reason}")
