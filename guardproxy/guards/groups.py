"""GroupGuard: which declared group each row of a request belongs to."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Literal

from guardproxy.guards.exchange import (
    MAX_ROWS,
    AmbiguousRequest,
    Exchange,
    TooManyRows,
    check_rows,
    read_request,
)
from guardproxy.payloads import JsonPath, Payload
from guardproxy.payloads.errors import AmbiguousInput, TooManyValues, over_limit
from guardproxy.policy.models import GroupSpec, OnError

OTHER = "other"
ANY = "*"


def telemetry_group(group: str, mode: Literal["label", "hashed", "none"]) -> str:
    """What telemetry may carry for a group: the label, a short stable hash, or nothing."""
    if mode == "label":
        return group
    if mode == "hashed" and group:
        return hashlib.blake2b(group.encode(), digest_size=4).hexdigest()
    return ""


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


class GroupGuard:
    """Resolves ex.groups from a header, a named input feature or a JSON path."""

    name = "groups"
    idle = frozenset({"response"})  # the chain skips this hook: it does nothing
    on_error: OnError = "fail_open"

    def __init__(self, spec: GroupSpec, payload: Payload, max_rows: int = MAX_ROWS) -> None:
        if spec.attribute is None:
            raise ValueError("GroupGuard needs groups.attribute")
        self._max_rows = max_rows
        self._declared = {value: value for value in spec.values}
        self._resolve = self._resolver(spec, payload)

    def _resolver(self, spec: GroupSpec, payload: Payload) -> Callable[[Exchange], list[object]]:
        attribute = spec.attribute
        assert attribute is not None
        if attribute.header is not None:
            header = attribute.header.lower().encode("latin-1")
            return lambda ex: [_text(ex.headers.get(header))]
        if attribute.input is not None:
            name = attribute.input
            return lambda ex: payload.group_feature(read_request(ex), name)
        path, enough = JsonPath(attribute.jsonpath or "$"), self._max_rows + 1
        return lambda ex: path.find(read_request(ex), enough) or [None]

    def group_of(self, value: object) -> str:
        """The declared group a raw value names, else "other"."""
        if isinstance(value, bool):
            return self._declared.get(str(value).lower(), OTHER)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, str):
            return self._declared.get(value, OTHER)
        if value is None or isinstance(value, int | float):
            return self._declared.get(str(value), OTHER)
        # Not rendered: a request may give every row the same large object (OpenAI's n).
        return OTHER

    async def on_request(self, ex: Exchange) -> None:
        """Set ex.groups, one per row (or one for the whole request)."""
        try:
            values = self._resolve(ex)
        except TooManyValues as exc:  # refused before its rows were built
            raise TooManyRows(over_limit(exc.rows, min(exc.limit, self._max_rows))) from None
        except AmbiguousInput as exc:
            raise AmbiguousRequest(str(exc)) from None
        check_rows(len(values), self._max_rows)
        ex.groups = list(map(self.group_of, values))

    async def on_response(self, ex: Exchange) -> None:
        """Nothing to do on the answer."""
