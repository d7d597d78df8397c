"""The policy sections the guards read: groups, decisions, labels, and review sampling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from guardproxy.policy.basics import Duration, OnError, Rate, Strict


def _trusted_header(where: str, header: str | None, trusted: bool) -> None:
    """A header is whatever the client sends: it may decide only when declared trusted."""
    if header is not None and not trusted:
        raise ValueError(
            f"{where}.header {header!r} is set by the client, who could choose its own value; "
            f"add {where}.trusted: true only if a gateway you control sets or strips it"
        )
    if header is None and trusted:
        raise ValueError(f"{where}.trusted applies only to a header")


class GroupAttribute(Strict):
    """Where a request's group comes from: exactly one of header, input, jsonpath."""

    header: str | None = None
    input: str | None = None
    jsonpath: str | None = None
    trusted: bool = False  # a header group needs it: the operator vouches for the header

    @model_validator(mode="after")
    def _exactly_one(self) -> GroupAttribute:
        chosen = [v for v in (self.header, self.input, self.jsonpath) if v is not None]
        if len(chosen) != 1:
            raise ValueError("groups.attribute needs exactly one of header, input, jsonpath")
        _trusted_header("groups.attribute", self.header, self.trusted)
        return self


class SubjectSpec(Strict):
    """Who a randomized decision is about: a trusted header or a JSON path of the request."""

    header: str | None = None
    jsonpath: str | None = None
    trusted: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> SubjectSpec:
        if (self.header is None) == (self.jsonpath is None):
            raise ValueError("decision.subject needs exactly one of header, jsonpath")
        if self.jsonpath is not None and not self.jsonpath.startswith("$"):
            raise ValueError("decision.subject.jsonpath must start with '$'")
        _trusted_header("decision.subject", self.header, self.trusted)
        return self


class GroupSpec(Strict):
    """The sensitive attribute, its declared values, and what telemetry may carry."""

    attribute: GroupAttribute | None = None
    values: tuple[str, ...] = ()
    telemetry: Literal["label", "hashed", "none"] = "label"

    @field_validator("values")
    @classmethod
    def _distinct_values(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for value in values:
            if not value or value in seen:
                raise ValueError(f"group value {value!r} is empty or repeated (expected distinct)")
            seen.add(value)
        return values


class AdaptSpec(Strict):
    """Learning thresholds from labeled traffic."""

    constraint: Literal[
        "none", "per_group", "demographic_parity", "equal_opportunity", "equalized_odds"
    ] = "equal_opportunity"
    objective: Literal["accuracy", "balanced_accuracy", "cost"] = "accuracy"
    cost: tuple[float, float, float, float] | None = None  # (TN, FP, FN, TP)
    min_labels_per_group: int = Field(default=200, ge=1)
    max_step: float = Field(default=0.05, gt=0)
    every: Duration = 60.0
    tolerance: float = Field(default=0.0, ge=0.0, le=1.0)
    pinned: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _cost_given(self) -> AdaptSpec:
        if self.objective == "cost" and self.cost is None:
            raise ValueError("objective 'cost' needs cost: [TN, FP, FN, TP]")
        return self


class DecisionSpec(Strict):
    """Group-aware decision thresholds and how the decision is reported."""

    threshold: float = 0.5
    per_group: dict[str, float] = Field(default_factory=dict)
    annotate: Literal["headers", "body", "rewrite"] = "headers"
    label_output: str | None = None  # the model's own label, replaced in rewrite mode
    adapt: AdaptSpec | None = None
    on_error: OnError = "fail_open"
    subject: SubjectSpec | None = None  # None: the scored row's own content


class BlockSpec(Strict):
    """The error a blocking guard answers with."""

    status: int = Field(default=422, ge=400, le=599)
    message: str = "the answer was withheld by policy"


MAX_TERMS = 10_000  # labels.deny: terms (or labels) in one list
MAX_TERM = 100  # characters of one


class LabelsSpec(Strict):
    """Output label guard: labels that must not reach the client."""

    deny: tuple[str, ...] = ()
    action: Literal["suppress", "block", "flag"] = "suppress"
    output: str | None = None  # output or field holding the labels
    path: str | None = None  # jsonpath to the labels, for the jsonpath protocol
    block: BlockSpec = BlockSpec()
    on_error: OnError = "fail_open"

    @field_validator("deny")
    @classmethod
    def _terms(cls, deny: tuple[str, ...]) -> tuple[str, ...]:
        if len(deny) > MAX_TERMS:
            raise ValueError(f"{len(deny)} terms; at most {MAX_TERMS}")
        for term in deny:
            if not term.strip():
                raise ValueError("an empty term matches nothing")
            if len(term) > MAX_TERM:
                raise ValueError(f"a term of {len(term)} characters; at most {MAX_TERM}")
        return deny


class SinkSpec(Strict):
    """Where samples go: rotating JSONL files (default) or a Redis stream."""

    jsonl: str | None = None  # directory; None means the --samples directory
    redis_stream: str | None = None
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)  # per file, then rotate
    max_age: Duration = 3600.0  # per file, then rotate
    max_total_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024)  # every file together
    retention: Duration = 7 * 86400.0  # files older than this are deleted
    queue: int = Field(default=10_000, ge=1)  # samples waiting to be written, at most
    queue_bytes: int = Field(default=64 * 1024 * 1024, ge=65536)  # and the bytes they hold

    @model_validator(mode="after")
    def _budget_holds_a_file(self) -> SinkSpec:
        if self.max_total_bytes < self.max_bytes:
            raise ValueError(
                f"sink.max_total_bytes {self.max_total_bytes} is below sink.max_bytes "
                f"{self.max_bytes} (expected room for at least one whole file)"
            )
        return self


class SamplingSpec(Strict):
    """Review sampling of request/response pairs, stratified by group, redacted."""

    rate: Rate = 0.0
    min_per_group: int = Field(default=0, ge=0)
    # Flagged, blocked and errored exchanges kept per window; beyond it, sampled at `rate`.
    max_always: int = Field(default=1000, ge=0)
    window: Duration = 60.0
    redact: tuple[str, ...] = ()  # field names or jsonpaths
    detectors: tuple[Literal["email", "phone", "card", "national_id"], ...] = (
        "email",
        "phone",
        "card",
        "national_id",
    )
    max_body_bytes: int = Field(default=64 * 1024, ge=256)  # per body; larger: truncated
    sink: SinkSpec = SinkSpec()
