"""One request/response pair as it travels the guard chain, and what the guards decided."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from guardproxy.payloads.codec import dumps, loads
from guardproxy.transport import HeaderList, Headers

__all__ = ["Exchange", "Reply", "Verdict", "dumps", "is_json_answer", "loads", "media_type"]

_UNPARSED: Any = object()


class Verdict(NamedTuple):
    """The decision for one row of a prediction (a tuple: immutable, cheap to build)."""

    group: str
    score: float
    threshold: float
    decision: int


@dataclass(slots=True)
class Reply:
    """An answer a guard gives instead of the upstream's (a block, a fail_closed error)."""

    status: int
    error: str
    headers: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Exchange:
    """A guarded request and its response; guards read and annotate it."""

    request_id: str
    region: str
    model: str
    method: str
    path: str
    headers: Headers  # the client's, as received (names and values are bytes)
    body: bytes
    started: float
    version: str = ""  # the model version: the answer's, else the path's
    status: int = 0
    response_headers: HeaderList = field(default_factory=list)  # forwarded to the client
    response_type: bytes = b""  # the answer's media type, lower-cased, without parameters
    response_body: bytes = b""
    groups: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    reply: Reply | None = None
    sampled: bool = False
    upstream_seconds: float = 0.0
    unscored: bool = False
    _request_json: Any = _UNPARSED
    _response_json: Any = _UNPARSED
    response_changed: bool = False
    decoded: bool = False  # the request (and answer) arrive as documents, not JSON bytes: gRPC

    @classmethod
    def from_documents(
        cls,
        request_id: str,
        region: str,
        model: str,
        method: str,
        path: str,
        headers: Headers,
        request: Any,
        started: float,
        version: str = "",
    ) -> Exchange:
        """An exchange whose request arrived as a document (gRPC): no body bytes to parse."""
        ex = cls(request_id, region, model, method, path, headers, b"", started, version)
        ex._request_json = request
        ex.decoded = True
        return ex

    def set_response_document(self, status: int, document: Any) -> None:
        """The upstream's answer, already decoded (gRPC): guards read it without parsing."""
        self.status = status
        self._response_json = document

    def request_record(self) -> bytes | Any:
        """The request as a sample keeps it: the body, or the document it arrived as."""
        return self._request_json if self.decoded else self.body

    def response_record(self) -> bytes | Any:
        """The answer as a sample keeps it: the bytes, or the (changed or decoded) document."""
        if self.response_changed or (self.decoded and self._response_json is not _UNPARSED):
            return self._response_json
        return self.response_body

    def request_json(self) -> Any:
        """The request body parsed once (raises ValueError on malformed JSON)."""
        if self._request_json is _UNPARSED:
            self._request_json = loads(self.body)
        return self._request_json

    def response_json(self) -> Any:
        """The response body parsed once (raises ValueError on malformed JSON)."""
        if self._response_json is _UNPARSED:
            self._response_json = loads(self.response_body)
        return self._response_json

    def replace_response_json(self, document: Any) -> None:
        """Mark the parsed response as changed; the proxy re-serialises it once."""
        self._response_json = document
        self.response_changed = True

    def final_response_body(self) -> bytes:
        """The bytes to send: the upstream's untouched, or the changed document."""
        if self.response_changed:
            return dumps(self._response_json)
        return self.response_body


def is_json_answer(ex: Exchange) -> bool:
    """True for a 2xx answer that is (or may be) JSON: the only answers guards change."""
    if not 200 <= ex.status < 300:
        return False
    if ex.decoded:
        return ex._response_json is not _UNPARSED
    if not ex.response_body:
        return False
    return not ex.response_type or b"json" in ex.response_type


def media_type(content_type: bytes | None) -> bytes:
    """A Content-Type value's media type, lower-cased, without parameters (b"" when absent)."""
    if not content_type:
        return b""
    return content_type.partition(b";")[0].strip().lower()
