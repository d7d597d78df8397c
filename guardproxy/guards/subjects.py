"""Who each scored row is about: the stable key a randomized threshold draws from."""

from __future__ import annotations

from guardproxy.guards.exchange import Exchange, read_request
from guardproxy.payloads import JsonPath, Payload
from guardproxy.payloads.canonical import canonical, indexed
from guardproxy.payloads.errors import PayloadError
from guardproxy.policy.models import SubjectSpec


class Subjects:
    """One byte string per row: a trusted subject id, a JSON path's values, or the row itself.

    Never the request id: a client picks that freely, so it could retry until a draw suits it.
    """

    __slots__ = ("_header", "_path", "_payload")

    def __init__(self, spec: SubjectSpec | None, payload: Payload) -> None:
        self._payload = payload
        header = spec.header if spec is not None else None
        self._header = header.lower().encode("latin-1") if header else None
        self._path = JsonPath(spec.jsonpath) if spec is not None and spec.jsonpath else None

    def from_content(self, ex: Exchange) -> bool:
        """Whether the subject is read from the request's content (no trusted header set)."""
        return self._header is None or not ex.headers.get(self._header)

    def rows(self, ex: Exchange, rows: int) -> list[bytes]:
        """The subject of each of `rows` scored rows (PayloadError when the request has none)."""
        if self._header is not None:
            value = ex.headers.get(self._header)
            if value:
                return indexed(b"h:" + value, rows)
            # No subject named: the row's content still keeps a client from re-rolling.
        doc = read_request(ex, whole=True)  # a binary request's every tensor: the whole row
        if self._path is not None:
            return self._from_path(doc, rows)
        keys = self._payload.row_keys(doc, rows)
        if len(keys) != rows:
            raise PayloadError(f"{len(keys)} rows in the request for {rows} scores")
        return keys

    def _from_path(self, doc: object, rows: int) -> list[bytes]:
        assert self._path is not None
        values = self._path.find(doc)
        if len(values) == rows:
            return [b"p:" + canonical(value) for value in values]
        if len(values) == 1:
            return indexed(b"p:" + canonical(values[0]), rows)
        raise PayloadError(f"decision.subject {self._path.text} gives {len(values)} values")
