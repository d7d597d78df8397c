"""One request/response pair as it travels the guard chain, and what the guards decided."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from guardproxy.payloads.binary_bodies import BinaryBodies
from guardproxy.payloads.codec import dumps, loads, repeats_a_key
from guardproxy.payloads.errors import (
    MAX_ROWS,
    REPEATED_KEY,
    AmbiguousInput,
    MalformedBinary,
    MalformedJson,
    TooManyValues,
    over_limit,
)
from guardproxy.transport import HeaderList, Headers, RequestError

__all__ = [
    "MAX_ROWS",
    "AmbiguousRequest",
    "Exchange",
    "Refused",
    "Reply",
    "TooManyRows",
    "UnreadableRequest",
    "Verdict",
    "check_rows",
    "dumps",
    "is_json_answer",
    "loads",
    "media_type",
    "read_request",
]

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


class Refused(RequestError):
    """A refusal of the client's request, as a body too large is: not a guard's failure, so
    no on_error applies, and nothing is observed or sampled."""

    kind = "refused"


class TooManyRows(Refused):
    """A batch over the row limit: each row's guarding holds the event loop (413)."""

    status = 413
    kind = "too_many_rows"


class AmbiguousRequest(Refused):
    """A request the guards and the model could read differently (400): an input the policy
    reads given twice, or a group value per row for a different number of scores. Passed on
    under `on_error: fail_open`, its client would choose which group's threshold applies."""

    status = 400
    kind = "ambiguous"


class UnreadableRequest(Refused):
    """A request the guards that decide from it cannot parse (400): JSON orjson refuses but
    Python's json.loads, behind many model servers, reads (NaN, 1e400, a lone surrogate,
    nesting past 1,024 levels), or binary framing that does not add up. Passed on, the
    model would score it at a threshold no group chose."""

    status = 400
    kind = "unreadable"


def check_rows(rows: int, limit: int) -> None:
    """Raise TooManyRows when a batch has more rows than the limit."""
    if rows > limit:
        raise TooManyRows(over_limit(rows, limit))


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
    version: str = ""  # the model version its answer names: never the client's path
    status: int = 0
    response_headers: HeaderList = field(default_factory=list)  # forwarded to the client
    response_type: bytes = b""  # the answer's media type, lower-cased, without parameters
    response_body: bytes = b""
    groups: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    request_errors: int = 0  # of the errors, the request's: what the client sent
    annotations: dict[str, str] = field(default_factory=dict)
    reply: Reply | None = None
    sampled: bool = False
    upstream_seconds: float = 0.0
    unscored: bool = False
    _request_json: Any = _UNPARSED
    _response_json: Any = _UNPARSED
    response_changed: bool = False
    decoded: bool = False  # the request (and answer) arrive as documents, not JSON bytes: gRPC
    binary: BinaryBodies | None = None  # an OIP body in the binary tensor extension, either way
    streamed: bool = False  # the answer is a stream (server-sent events), not one body
    source: Any = None  # what a sample keeps of a decoded request, when not its document
    request_checked: bool = False  # read_request found no key repeated in the request

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
        record: Any = None,
    ) -> Exchange:
        """An exchange whose request arrived as a document (gRPC): no body bytes to parse.

        `record` is what a sample keeps of the request (else the document itself).
        """
        ex = cls(request_id, region, model, method, path, headers, b"", started)
        ex._request_json = request
        ex.decoded = True
        ex.source = record
        return ex

    def forget_bodies(self) -> None:
        """Drop the answer and both parsed documents, once the answer is handed to the
        client: while a slow client reads it, the transport's copy is the one kept."""
        self.response_body = b""
        self._request_json = self._response_json = _UNPARSED

    def set_response_document(self, status: int, document: Any) -> None:
        """The upstream's answer, already decoded (gRPC): guards read it without parsing."""
        self.status = status
        self._response_json = document

    def request_record(self) -> bytes | Any:
        """The request as a sample keeps it: the body, or the document it arrived as."""
        if self.decoded:
            return self._request_json if self.source is None else self.source
        binary = self.binary
        if binary is not None and binary.request is not None:
            return binary.request_record(self.body)
        return self.body

    def response_record(self) -> bytes | Any:
        """The answer as a sample keeps it: the bytes, or the (changed or decoded) document."""
        binary = self.binary
        if binary is not None and binary.response is not None:
            return binary.response_record(self.response_body)
        if (
            self.response_changed
            or self.streamed
            or (self.decoded and self._response_json is not _UNPARSED)
        ):
            return self._response_json
        return self.response_body

    def request_json(self) -> Any:
        """The request body parsed once (ValueError on malformed JSON or binary framing)."""
        if self._request_json is _UNPARSED:
            binary = self.binary
            if binary is None or binary.request is None:
                self._request_json = loads(self.body)
            else:  # only the tensors the policy reads
                self._request_json = binary.request_document(self.body)
        return self._request_json

    def whole_request_json(self) -> Any:
        """The request with every tensor decoded (a row's subject is all of its content)."""
        document = self.request_json()
        binary = self.binary
        if binary is not None and binary.needs_whole():
            document = self._request_json = binary.request_document(self.body, whole=True)
        elif self.source is not None:  # a gRPC message: its policy's tensors were decoded
            document = self._request_json = self.source.whole()
        return document

    def response_json(self) -> Any:
        """The response body parsed once (ValueError on malformed JSON or binary framing)."""
        if self._response_json is _UNPARSED:
            binary = self.binary
            if binary is None or binary.response is None:
                self._response_json = loads(self.response_body)
            else:  # only the outputs the policy reads, their rows counted before decoding
                try:
                    self._response_json = binary.response_document(self.response_body)
                except TooManyValues as exc:  # refused as a JSON answer over the limit is
                    raise TooManyRows(str(exc)) from None
        return self._response_json

    def replace_response_json(self, document: Any) -> None:
        """Mark the parsed response as changed; the proxy re-serialises it once.

        A binary answer is encoded here, so a value it cannot hold fails in the guard.
        """
        binary = self.binary
        if binary is not None and binary.response is not None:
            binary.encode(document)
        self._response_json = document
        self.response_changed = True

    def set_stream_record(self, record: dict[str, Any]) -> None:
        """What a streamed answer said, as its sample keeps it (the text, not the events)."""
        self.streamed = True
        self._response_json = record

    def final_response_body(self) -> bytes:
        """The bytes to send: the upstream's untouched, or the changed document."""
        if self.response_changed:
            binary = self.binary
            if binary is not None and binary.encoded is not None:
                return binary.encoded.body
            return dumps(self._response_json)
        return self.response_body


def read_request(ex: Exchange, whole: bool = False) -> Any:
    """The request as a guard that decides from it reads it (a group, a row's subject).

    AmbiguousRequest (400) when one of its JSON objects names a key twice: orjson keeps the
    last, RapidJSON (Triton) and others the first, so a client could show the guards one
    group and the model another. A binary request's JSON header is checked as it is decoded.
    UnreadableRequest (400) when the guards cannot parse it at all.
    """
    try:
        doc = ex.whole_request_json() if whole else ex.request_json()
    except AmbiguousInput as exc:  # a key repeated in a binary request's JSON header
        raise AmbiguousRequest(str(exc)) from None
    except (MalformedJson, MalformedBinary) as exc:
        raise UnreadableRequest(f"the guards cannot read the request: {exc}") from None
    if not ex.request_checked:
        binary = ex.binary
        json_body = not ex.decoded and (binary is None or binary.request is None)
        if json_body and repeats_a_key(ex.body, doc):
            raise AmbiguousRequest(REPEATED_KEY)
        ex.request_checked = True
    return doc


def is_json_answer(ex: Exchange) -> bool:
    """True for a 2xx answer read whole: guards read it as JSON (or binary tensors)."""
    if not 200 <= ex.status < 300:
        return False
    if ex.decoded:
        return ex._response_json is not _UNPARSED
    # Whatever its type says: clients such as the openai SDK parse a text/plain or an untyped
    # answer as JSON all the same (an event stream is relayed, never read here).
    return bool(ex.response_body)


def media_type(content_type: bytes | None) -> bytes:
    """A Content-Type value's media type, lower-cased, without parameters (b"" when absent)."""
    if not content_type:
        return b""
    return content_type.partition(b";")[0].strip().lower()
