"""The one error every payload accessor and guard raises for a payload it cannot read."""

from __future__ import annotations


class PayloadError(Exception):
    """A request or answer is not shaped as the protocol and the policy say."""


class MalformedJson(PayloadError, ValueError):
    """A body that is not JSON (a ValueError too, for callers that parse outside guards)."""


class MalformedBinary(PayloadError, ValueError):
    """A binary tensor body whose framing, sizes or tensors disagree."""


def over_limit(rows: int, limit: int) -> str:
    """What a client is told of a batch over the row limit."""
    return f"a batch of {rows} rows is over the limit of {limit}"


class TooManyValues(PayloadError):
    """A tensor the guards read holds more rows than they take: refused before decoding."""

    def __init__(self, rows: int, limit: int) -> None:
        super().__init__(over_limit(rows, limit))
        self.rows = rows
        self.limit = limit
