"""The request features a model's drift section watches, read from the parsed request."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from guardproxy.guards.exchange import Exchange
from guardproxy.payloads import Payload

# Per watched input: one value per scored row (None where the request had none).
Features = tuple[tuple[object, ...], ...]
FeatureReader = Callable[[Exchange, int], Features]
# Characters of a text value the monitors keep. The monitor queue budgets ~120 bytes a value
# (observation.ROW_SIZE): a value as long as the body would hold the body while it waits.
LONGEST_TEXT = 64


def feature_reader(payload: Payload, names: Sequence[str]) -> FeatureReader | None:
    """Reads the watched inputs of a request, one value per row; None when none are watched."""
    if not names:
        return None

    def read(ex: Exchange, rows: int) -> Features:
        features = []
        for name in names:  # a loop: a generator would cost more than the usual one input
            features.append(_values(payload, ex, name, rows))
        return tuple(features)

    return read


def _values(payload: Payload, ex: Exchange, name: str, rows: int) -> tuple[object, ...]:
    try:
        values = payload.feature(ex.request_json(), name)
    except Exception:  # a body can be shaped to break any reader: the value is then missing
        return (None,) * rows  # counted as a missing value by the drift monitor
    return tuple(map(_kept, values)) if len(values) == rows else (None,) * rows


def _kept(value: object) -> object:
    """What the monitors keep of a value: numbers and short text as they are, the rest cut."""
    kind = type(value)
    if kind is float or kind is int or kind is bool or value is None:
        return value
    if isinstance(value, str):
        return value if len(value) <= LONGEST_TEXT else value[:LONGEST_TEXT]
    return f"<{kind.__name__}>"  # a list or object: no category, and no copy of it
