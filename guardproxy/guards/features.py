"""The request features a model's drift section watches, read from the parsed request."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from guardproxy.guards.exchange import Exchange
from guardproxy.payloads import Payload
from guardproxy.payloads.errors import PayloadError

# Per watched input: one value per scored row (None where the request had none).
Features = tuple[tuple[object, ...], ...]
FeatureReader = Callable[[Exchange, int], Features]


def feature_reader(payload: Payload, names: Sequence[str]) -> FeatureReader | None:
    """Reads the watched inputs of a request, one value per row; None when none are watched."""
    if not names:
        return None

    def read(ex: Exchange, rows: int) -> Features:
        return tuple(_values(payload, ex, name, rows) for name in names)

    return read


def _values(payload: Payload, ex: Exchange, name: str, rows: int) -> tuple[object, ...]:
    try:
        values = payload.feature(ex.request_json(), name)
    except (PayloadError, ValueError):
        return (None,) * rows  # counted as a missing value by the drift monitor
    return tuple(values) if len(values) == rows else (None,) * rows
