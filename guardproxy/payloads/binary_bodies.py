"""A guarded exchange's binary tensor bodies (OIP): what the policy reads, decoded once.

A model's policy reads few tensors: the group's input and the drift inputs of a request, the
score, label and rewritten outputs of an answer. `BinaryReads` names them once per model, so
a request carrying an image and one small `sex` input decodes only `sex`; every other
tensor keeps its bytes. A changed answer is encoded again at once (`encode`), so a value a
tensor cannot hold fails in the guard that wrote it, under that guard's `on_error`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from guardproxy.payloads.binary import (
    BinaryBody,
    BinaryPayloadError,
    Encoded,
    Key,
    decode,
    decode_rest,
    encode,
)
from guardproxy.payloads.errors import MalformedBinary, RepeatedKey
from guardproxy.policy.models import ModelPolicy

__all__ = ["HEADER_KEY", "BinaryBodies", "BinaryReads", "RawBody", "binary_reads"]

HEADER_KEY = b"inference-header-content-length"  # as the transport's headers look it up
_REWRITTEN = ("label", "predict")  # the outputs annotate: rewrite replaces by default


@dataclass(frozen=True, slots=True)
class BinaryReads:
    """The tensors of a binary body a model's policy reads (None: every one); rows it takes."""

    inputs: frozenset[str] | None
    outputs: frozenset[str] | None
    max_rows: int | None = None  # a request tensor read by name with more rows is refused


def binary_reads(spec: ModelPolicy, max_rows: int | None = None) -> BinaryReads | None:
    """What an OIP model's policy reads of binary bodies (None: not an OIP model)."""
    if spec.protocol != "kserve_v2":
        return None
    return BinaryReads(_inputs(spec), _outputs(spec), max_rows)


def _inputs(spec: ModelPolicy) -> frozenset[str] | None:
    names = {signal.input for signal in spec.signal_specs()}
    attribute = spec.groups.attribute
    if attribute is not None and attribute.jsonpath is not None:
        return None  # a path may point into any tensor's data
    if attribute is not None and attribute.input is not None:
        names.add(attribute.input)
    return frozenset(names)


def _outputs(spec: ModelPolicy) -> frozenset[str] | None:
    if spec.score.output is None or spec.score.path is not None or spec.labels.path is not None:
        return None  # the first output, or a path: decided only once the answer is read
    names = {spec.score.output}
    if spec.labels.deny:
        if spec.labels.output is None:
            return None  # the first BYTES output holds the labels
        names.add(spec.labels.output)
    if spec.decision.annotate == "rewrite":
        label = spec.decision.label_output
        names.update((label,) if label else _REWRITTEN)
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class RawBody:
    """A binary body kept for a sample, decoded whole when the sample is written (off path)."""

    body: bytes
    header: str
    key: Key

    def document(self, limit: int | None = None) -> dict[str, Any]:
        """Every tensor decoded; over `limit` bytes only the JSON header (tensors withheld)."""
        size = len(self.body)
        try:
            if limit is None or size <= limit:
                return decode(self.body, self.header, self.key).doc
            header = decode(self.body, self.header, self.key, only=frozenset()).doc
        except (BinaryPayloadError, RepeatedKey) as exc:
            return {"malformed_binary": str(exc), "bytes": size}
        return {"truncated": True, "bytes": size, "binary_data": "withheld", "header": header}


class BinaryBodies:
    """One exchange's binary request and answer: their headers, decoded forms, the re-encoding."""

    __slots__ = (
        "_answer", "_partial", "_request", "encoded", "malformed", "reads", "request", "response",
    )  # fmt: skip

    def __init__(self, reads: BinaryReads, request: str | None = None) -> None:
        self.reads = reads
        self.request = request  # the request's Inference-Header-Content-Length
        self.response: str | None = None  # the answer's
        self.encoded: Encoded | None = None  # the answer as changed by the guards
        self._answer: BinaryBody | None = None
        self._request: BinaryBody | None = None  # as last decoded (in part or whole)
        self._partial = False  # the request document lacks tensors the policy does not read
        self.malformed = False  # a body's framing, sizes or tensors disagreed

    def request_document(self, body: bytes, whole: bool = False) -> dict[str, Any]:
        """The request's document: the tensors the policy reads, or every one (`whole`).

        Asked for whole after a partial reading, it decodes only the tensors left as bytes.
        """
        partial = self._request
        if whole and partial is not None and self._partial:
            try:
                decode_rest(partial)
            except BinaryPayloadError as exc:
                self.malformed = True
                raise MalformedBinary(f"binary input: {exc}") from None
            self._partial = False
            return partial.doc
        only = None if whole else self.reads.inputs
        self._partial = only is not None
        self._request = self._decoded(body, self.request, "inputs", only, self.reads.max_rows)
        return self._request.doc

    def needs_whole(self) -> bool:
        """Whether the request was decoded in part (a row's subject needs every input)."""
        return self._partial

    def response_document(self, body: bytes) -> dict[str, Any]:
        """The answer's document: the outputs the policy reads decoded, the rest as bytes.

        An output it reads with more rows than the guards take is TooManyValues, undecoded.
        """
        reads = self.reads
        self._answer = self._decoded(body, self.response, "outputs", reads.outputs, reads.max_rows)
        return self._answer.doc

    def encode(self, doc: dict[str, Any]) -> None:
        """Encode the changed answer now (MalformedBinary when a tensor cannot hold a value)."""
        answer = self._answer
        if answer is None:
            raise MalformedBinary("no binary answer to change")
        answer.doc = doc
        try:
            self.encoded = encode(answer)
        except BinaryPayloadError as exc:
            raise MalformedBinary(f"binary answer: {exc}") from None

    def request_record(self, body: bytes) -> RawBody:
        """The request as a sample keeps it."""
        return RawBody(body, self.request or "", "inputs")

    def response_record(self, body: bytes) -> RawBody:
        """The answer as the client got it, as a sample keeps it."""
        if self.encoded is not None:
            return RawBody(self.encoded.body, str(self.encoded.header_length), "outputs")
        return RawBody(body, self.response or "", "outputs")

    def _decoded(
        self,
        body: bytes,
        header: str | None,
        key: Key,
        only: frozenset[str] | None,
        max_rows: int | None = None,
    ) -> BinaryBody:
        try:
            return decode(body, header, key, only, max_rows)
        except BinaryPayloadError as exc:
            self.malformed = True
            raise MalformedBinary(f"binary {key[:-1]}: {exc}") from None
