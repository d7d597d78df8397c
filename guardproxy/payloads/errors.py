"""The one error every payload accessor and guard raises for a payload it cannot read."""

from __future__ import annotations


class PayloadError(Exception):
    """A request or answer is not shaped as the protocol and the policy say."""


class MalformedJson(PayloadError, ValueError):
    """A body that is not JSON (a ValueError too, for callers that parse outside guards)."""


class MalformedBinary(PayloadError, ValueError):
    """A binary tensor body whose framing, sizes or tensors disagree."""


class AmbiguousInput(PayloadError):
    """An input the guards read is named twice: the guards and the model could each read a
    different one (servers disagree on which wins)."""


MAX_ROWS = 10_000  # rows of one request or answer the guards take, by default (--max-rows)
_SHOWN = 2**64  # a count past this is no real batch: never formatted (a huge int cannot be)


def over_limit(rows: int, limit: int) -> str:
    """What a client is told of a batch over the row limit."""
    count = str(rows) if type(rows) is int and 0 <= rows < _SHOWN else f"more than {limit}"
    return f"a batch of {count} rows is over the limit of {limit}"


class TooManyValues(PayloadError):
    """A tensor the guards read holds more rows than they take: refused before decoding."""

    def __init__(self, rows: int, limit: int) -> None:
        super().__init__(over_limit(rows, limit))
        self.rows = rows
        self.limit = limit


REPEATED_KEY = "a JSON object of the request names a key more than once"


class RepeatedKey(AmbiguousInput):
    """A request whose JSON names a key twice in one object: orjson keeps the last, RapidJSON
    (Triton) and others the first, so the guards and the model would read two requests."""

    def __init__(self) -> None:
        super().__init__(REPEATED_KEY)
