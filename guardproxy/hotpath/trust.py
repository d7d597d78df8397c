"""What the data port believes of a client: ids checked, region and forwarding only if trusted."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

MAX_REQUEST_ID = 128
AMBIGUOUS_REGION = "the region header is given more than once"
AMBIGUOUS = "\0ambiguous"  # what trusted_value gives for a header given twice: no region
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]+")


@dataclass(frozen=True, slots=True)
class Trust:
    """The operator's word on which client headers count (nothing, unless named)."""

    region_header: str | None = None  # the pod's --region serves every request when None
    forwarded: bool = False  # keep a front proxy's X-Forwarded-* / Forwarded headers

    @property
    def region_key(self) -> bytes | None:
        """The trusted region header's name, lower-case bytes (as byte headers are looked up)."""
        return self.region_header.lower().encode("latin-1") if self.region_header else None


class _Ids:
    """Random 128-bit ids, 256 to a system call: os.urandom per request showed in profiles."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> str:
        """A new id."""
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(4096), 0
        self._at = at + 16
        return self._pool[at : at + 16].hex()


_IDS = _Ids()
new_request_id = _IDS.next  # a random 128-bit id, hex encoded (a bound method: a quicker call)
# A forked worker must not hand out the ids its parent had drawn.
os.register_at_fork(after_in_child=lambda: setattr(_IDS, "_at", 1 << 30))


def trusted_value(values: Sequence[str]) -> str | None:
    """The one value a trusted header (or gRPC key) gives; AMBIGUOUS when it is given twice
    or as a list: a gateway that appends its own, rather than replacing the client's, would
    otherwise let the client's copy choose."""
    if not values:
        return None
    if len(values) > 1 or "," in values[0]:
        return AMBIGUOUS
    return values[0]


def request_id_of(value: str | None) -> tuple[str, bool]:
    """The client's id when well-formed, else a new one; True when a client's id was replaced.

    Well-formed: 1 to 128 characters of letters, digits and `._:-`. Anything else would end
    up in logs, records and headers, so it is replaced rather than trusted.
    """
    if value is None or value == "":
        return new_request_id(), False
    if well_formed_id(value):
        return value, False
    return new_request_id(), True


def well_formed_id(value: str) -> bool:
    """Whether a client's id is 1 to 128 characters of letters, digits and `._:-`."""
    return 0 < len(value) <= MAX_REQUEST_ID and _REQUEST_ID.fullmatch(value) is not None
