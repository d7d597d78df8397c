"""What the data port believes of a client: ids checked, region and forwarding only if trusted."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]+")


@dataclass(frozen=True, slots=True)
class Trust:
    """The operator's word on which client headers count (nothing, unless named)."""

    region_header: str | None = None  # the pod's --region serves every request when None
    forwarded: bool = False  # keep a front proxy's X-Forwarded-* / Forwarded headers

    def region_of(self, headers: Mapping[str, str]) -> str | None:
        """The region a request names, when a trusted header may name one."""
        if self.region_header is None:
            return None
        return headers.get(self.region_header)


def new_request_id() -> str:
    """A random 128-bit id, hex encoded."""
    return os.urandom(16).hex()


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
