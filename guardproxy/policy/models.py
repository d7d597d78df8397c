"""The policy schema: a region, its models, and every section (importable from here)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from guardproxy.policy.basics import (
    Duration,
    OnError,
    Protocol,
    Rate,
    Strict,
    parse_duration,
)
from guardproxy.policy.guarding import (
    AdaptSpec,
    BlockSpec,
    DecisionSpec,
    GroupAttribute,
    GroupSpec,
    LabelsSpec,
    SamplingSpec,
    SinkSpec,
    SubjectSpec,
)
from guardproxy.policy.merge import SECTIONS, deep_merge
from guardproxy.policy.monitoring import (
    TRIP_MONITORS,
    BreakerSpec,
    DriftSpec,
    DriftTests,
    FairnessSpec,
    HalfOpenSpec,
    JsSpec,
    MaxDifference,
    MinRatio,
    OpenSpec,
    PsiSpec,
    PValueSpec,
    ReferenceSpec,
    SignalSpec,
    TripRule,
)
from guardproxy.policy.routes import unmatchable

__all__ = [
    "DEFAULT_ROUTES",
    "NAME",
    "SECTIONS",
    "TRIP_MONITORS",
    "AdaptSpec",
    "BlockSpec",
    "BreakerSpec",
    "DecisionSpec",
    "DriftSpec",
    "DriftTests",
    "Duration",
    "FairnessSpec",
    "GroupAttribute",
    "GroupSpec",
    "HalfOpenSpec",
    "JsSpec",
    "LabelsSpec",
    "MaxDifference",
    "MinRatio",
    "ModelPolicy",
    "OnError",
    "OpenSpec",
    "PValueSpec",
    "Policy",
    "Protocol",
    "PsiSpec",
    "Rate",
    "ReferenceSpec",
    "SamplingSpec",
    "ScoreSpec",
    "Sections",
    "SignalSpec",
    "SinkSpec",
    "Strict",
    "SubjectSpec",
    "TripRule",
    "UnguardedSpec",
    "parse_duration",
]


class ScoreSpec(Strict):
    """Where the model's score is in its answer."""

    output: str | None = None  # named output (v2 outputs[].name, a tfserving/mlflow column)
    index: int = Field(default=0, ge=0)  # column of a 2-D output, e.g. 1 for predict_proba
    path: str | None = None  # jsonpath protocol: "$.predictions[*].score"
    range: tuple[float, float] = (0.0, 1.0)

    @model_validator(mode="after")
    def _ordered_range(self) -> ScoreSpec:
        if self.range[0] >= self.range[1]:
            raise ValueError("score.range must be [low, high] with low < high")
        return self


NAME = r"^[A-Za-z0-9_.-]+$"
# Where each protocol's requests arrive, for a model named {name}; `*` is one path segment.
DEFAULT_ROUTES: dict[str, tuple[str, ...]] = {
    "kserve_v2": ("/v2/models/{name}/infer", "/v2/models/{name}/versions/*/infer"),
    "tfserving": ("/v1/models/{name}:predict", "/v1/models/{name}/versions/*:predict"),
    "mlflow": ("/invocations",),
    "seldon_v1": ("/api/v1.0/predictions",),
    # OpenAI's routes, the Messages API's (vLLM serves it too) and Ollama's own.
    "openai": (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/messages",
        "/api/chat",
        "/api/generate",
    ),
    "jsonpath": (),
}


class Sections(Strict):
    """What a model is guarded with; region-level values are every model's defaults."""

    groups: GroupSpec = GroupSpec()
    decision: DecisionSpec = DecisionSpec()
    labels: LabelsSpec = LabelsSpec()
    sampling: SamplingSpec = SamplingSpec()
    drift: DriftSpec | None = None
    fairness: FairnessSpec | None = None
    breaker: BreakerSpec = BreakerSpec()


class ModelPolicy(Sections):
    """One model behind the proxy: its protocol, routes, score, and its own sections."""

    name: str = Field(pattern=NAME)
    description: str = ""
    protocol: Protocol = "kserve_v2"
    routes: tuple[str, ...] = ()
    score: ScoreSpec = ScoreSpec()

    @model_validator(mode="before")
    @classmethod
    def _default_routes(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        routes = data.get("routes")
        if not routes:
            protocol = data.get("protocol", "kserve_v2")
            if protocol == "jsonpath":
                raise ValueError("protocol jsonpath needs routes (the paths its requests use)")
            routes = DEFAULT_ROUTES.get(protocol, ())
        if isinstance(routes, list | tuple) and isinstance(data.get("name"), str):
            name = data["name"]
            routes = [r.replace("{name}", name) if isinstance(r, str) else r for r in routes]
        return {**data, "routes": routes}

    @field_validator("routes")
    @classmethod
    def _absolute_routes(cls, routes: tuple[str, ...]) -> tuple[str, ...]:
        return matchable_routes(routes)

    @field_validator("name")
    @classmethod
    def _name_is_a_segment(cls, name: str) -> str:
        # Its default routes would read /v2/models/../infer: resolved away, never matched.
        if name in (".", ".."):
            raise ValueError(f"model name {name!r} is a dot segment (expected a name like m1)")
        return name

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelPolicy:
        low, high = self.score.range
        declared = set(self.groups.values)
        for group, value in self.decision.per_group.items():
            if group not in declared:
                raise ValueError(f"decision.per_group names undeclared group {group!r}")
            if not low <= value <= high:
                raise ValueError(f"threshold {value} for {group!r} is outside score range")
        if not low <= self.decision.threshold <= high:
            raise ValueError(f"decision.threshold {self.decision.threshold} is outside score range")
        self._check_trip_rules()
        return self

    def _check_trip_rules(self) -> None:
        kinds = {"score": "numeric"} | {s.input: s.kind for s in self.signal_specs()}
        for rule in self.breaker.trip:
            parts = rule.when.split(".")
            if parts[0] == "drift":
                self._check_drift_rule(rule.when, kinds.get(".".join(parts[1:-1])), parts[-1])
            if parts[0] == "fairness" and self.fairness is None:
                raise ValueError(f"breaker rule {rule.when!r} needs a fairness section")

    def _check_drift_rule(self, when: str, kind: str | None, test: str) -> None:
        """A drift rule must name a test that runs on its signal, or it could never fire."""
        if self.drift is None:
            raise ValueError(f"breaker rule {when!r} needs a drift section")
        if kind is None:
            raise ValueError(f"breaker rule {when!r} names no drift signal")
        if getattr(self.drift.tests, test) is None:
            raise ValueError(f"breaker rule {when!r} needs drift.tests.{test}, which is off")
        runs_on = {"ks": "numeric", "chi2": "categorical"}.get(test, kind)
        if runs_on != kind:
            raise ValueError(f"breaker rule {when!r}: {test} runs on {runs_on} signals only")

    def signal_specs(self) -> list[SignalSpec]:
        """The drift section's input signals."""
        if self.drift is None:
            return []
        return [s for s in self.drift.signals if isinstance(s, SignalSpec)]


def matchable_routes(routes: tuple[str, ...]) -> tuple[str, ...]:
    """Routes that start with / and that some path could match (else ValueError)."""
    for route in routes:
        if not route.startswith("/"):
            raise ValueError(f"route {route!r} must start with / (e.g. /v2/models/*/infer)")
        why = unmatchable(route)
        if why is not None:
            raise ValueError(f"route {route!r} can never match: {why}")
    return routes


class UnguardedSpec(Strict):
    """Requests whose path no model of the region guards: passed to the upstream, or refused."""

    action: Literal["pass", "refuse"] = "pass"
    allow: tuple[str, ...] = ()  # with refuse: routes that still pass (health checks, metadata)

    @field_validator("allow")
    @classmethod
    def _matchable(cls, allow: tuple[str, ...]) -> tuple[str, ...]:
        return matchable_routes(allow)

    @model_validator(mode="after")
    def _allow_needs_refuse(self) -> UnguardedSpec:
        if self.allow and self.action != "refuse":
            raise ValueError("unguarded.allow applies only with unguarded.action: refuse")
        return self


class Policy(Sections):
    """One region's policy after `extends`: defaults, and every model with them merged in."""

    region: str = Field(pattern=NAME)
    extends: str | None = None
    description: str = ""
    models: tuple[ModelPolicy, ...] = ()
    unguarded: UnguardedSpec = UnguardedSpec()

    @model_validator(mode="before")
    @classmethod
    def _defaults_under_models(cls, data: object) -> object:
        """Each model's sections merged over the region's: a model overrides what it names."""
        if not isinstance(data, dict) or not isinstance(data.get("models"), list | tuple):
            return data
        defaults = {k: v for k, v in data.items() if k in SECTIONS}
        models = [deep_merge(defaults, m) if isinstance(m, dict) else m for m in data["models"]]
        return {**data, "models": models}

    @field_validator("models")
    @classmethod
    def _distinct_names(cls, models: tuple[ModelPolicy, ...]) -> tuple[ModelPolicy, ...]:
        seen: set[str] = set()
        for model in models:
            if model.name in seen:
                raise ValueError(f"model {model.name!r} is declared twice")
            seen.add(model.name)
        return models

    def model(self, name: str) -> ModelPolicy:
        """A declared model by name (KeyError when there is none)."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)
