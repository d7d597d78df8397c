"""Limits and timeouts of the server and the upstream pool, validated once."""

from __future__ import annotations

from dataclasses import dataclass


def _positive(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def tick_for(*timeouts: float | None) -> float:
    """How often deadlines are checked: a quarter of the shortest timeout, 10 ms to 1 s."""
    finite = [t for t in timeouts if t is not None]
    return min(1.0, max(0.01, min(finite) / 4)) if finite else 1.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Per-connection limits of the server (sizes in bytes, times in seconds)."""

    max_head_size: int = 64 * 1024  # request line + headers; over it: 431
    header_timeout: float = 10.0  # from the first byte of a request to the end of its head
    body_timeout: float = 30.0  # longest silence while a request body is being received
    # Bytes a second a body must average once it has taken body_timeout (0: no minimum):
    # without it, a client sending a byte now and then holds its request open forever.
    body_min_rate: float = 0.0
    keepalive_timeout: float = 75.0  # an idle connection between requests is closed after it
    write_timeout: float = 60.0  # longest a response waits for a client that does not read
    high_water: int = 64 * 1024  # body bytes buffered before the socket stops being read
    max_pipelined: int = 16  # requests parsed ahead of the one being answered
    # Connections open at once (None: no limit); more are closed as soon as they are accepted.
    # Each may hold a head and the first part of a body that no other budget counts.
    max_connections: int | None = None
    # Connections open at once from one client address (None: no limit): without it, one
    # client can hold every connection max_connections allows and shut the others out.
    max_connections_per_client: int | None = None

    def __post_init__(self) -> None:
        _positive(
            max_head_size=self.max_head_size,
            header_timeout=self.header_timeout,
            body_timeout=self.body_timeout,
            keepalive_timeout=self.keepalive_timeout,
            write_timeout=self.write_timeout,
            high_water=self.high_water,
            max_pipelined=self.max_pipelined,
            max_connections=self.max_connections,
            max_connections_per_client=self.max_connections_per_client,
        )
        if self.body_min_rate < 0:
            raise ValueError(f"body_min_rate must not be negative, got {self.body_min_rate}")

    @property
    def tick(self) -> float:
        """The interval of the deadline sweep."""
        return tick_for(
            self.header_timeout, self.body_timeout, self.keepalive_timeout, self.write_timeout
        )


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Timeouts and limits of the upstream pool (None: no limit)."""

    connect_timeout: float | None = 5.0
    read_timeout: float | None = 60.0  # longest silence while an answer is awaited or read
    total_timeout: float | None = 300.0  # a whole exchange, from sending to the last byte
    per_key: int = 64  # concurrent requests per key
    queue_per_key: int = 256  # requests waiting for a slot of one key; more get 503
    queue_timeout: float = 10.0  # longest wait for a slot; then 503
    max_idle: int = 64  # idle keep-alive connections kept
    idle_timeout: float = 15.0  # an idle connection unused this long is closed
    high_water: int = 64 * 1024  # response bytes buffered before the socket stops being read
    max_head_size: int = 64 * 1024  # status line + headers of an answer

    def __post_init__(self) -> None:
        _positive(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            total_timeout=self.total_timeout,
            per_key=self.per_key,
            queue_timeout=self.queue_timeout,
            idle_timeout=self.idle_timeout,
            high_water=self.high_water,
            max_head_size=self.max_head_size,
        )
        if self.queue_per_key < 0 or self.max_idle < 0:
            raise ValueError("queue_per_key and max_idle must not be negative")

    @property
    def tick(self) -> float:
        """The interval of the deadline sweep."""
        return tick_for(self.read_timeout, self.total_timeout, self.idle_timeout)
