"""State backends: `memory` (one process) or `redis://HOST:PORT/DB` (shared by replicas)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from guardproxy.masking import mask_url
from guardproxy.state.base import (
    DEFAULT_MAX_RECORDS,
    DEFAULT_TTL,
    GroupState,
    Joined,
    Outcome,
    PredictionRecord,
    Saved,
    StateBackend,
    StateError,
)
from guardproxy.state.memory import MemoryState

__all__ = [
    "GroupState",
    "Joined",
    "MemoryState",
    "Outcome",
    "PredictionRecord",
    "Saved",
    "StateBackend",
    "StateError",
    "open_state",
    "redis_location",
]


REDIS_SCHEMES = ("redis", "rediss", "unix")


def open_state(
    spec: str, ttl: float = DEFAULT_TTL, max_records: int = DEFAULT_MAX_RECORDS
) -> StateBackend:
    """The backend a --state value names; a redis URL may carry `?prefix=...` for its keys."""
    if spec == "memory":
        return MemoryState(ttl, max_records)
    from guardproxy.state.redis import RedisState

    url, prefix = redis_location(spec)
    return RedisState(url, prefix=prefix, ttl=ttl)


def redis_location(spec: str) -> tuple[str, str]:
    """A Redis --state value as (its URL without `prefix`, the key prefix); else ValueError."""
    parts = urlsplit(spec)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"unknown state backend {mask_url(spec)!r} (expected memory or redis://HOST:PORT/DB)"
        )
    from guardproxy.state.redis import DEFAULT_PREFIX

    query = parse_qsl(parts.query)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix
