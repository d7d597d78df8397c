"""Compiled models and observations built directly, for tests of the parts behind the hot path."""

from __future__ import annotations

from typing import Any

from guardproxy.breaker.state import Admission, CircuitBreaker
from guardproxy.guards.exchange import Verdict
from guardproxy.hotpath.observation import Observation
from guardproxy.policy.models import BreakerSpec, Policy
from guardproxy.policy.table import CompiledModel, CompiledPolicy, PolicyTable, compile_policy


def compiled_table(region: str = "eu", name: str = "m", **sections: Any) -> PolicyTable:
    """A table whose default region holds one model with the given region-level sections."""
    policy = Policy.model_validate({"region": region, "models": [{"name": name}], **sections})
    return PolicyTable({region: compile_policy(policy)}, region)


_REGIONS: dict[int, CompiledPolicy] = {}


def compiled_model(region: str = "eu", name: str = "m", **sections: Any) -> CompiledModel:
    """One compiled model (no guard chain) of a fresh table."""
    entry = compiled_table(region, name, **sections).regions[region]
    _REGIONS[id(entry.models[0])] = entry
    return entry.models[0]


def region_of(model: CompiledModel) -> CompiledPolicy:
    """The compiled region a model from `compiled_model` belongs to."""
    return _REGIONS[id(model)]


def observation(
    model: CompiledModel,
    request_id: str = "r",
    verdicts: tuple[Verdict, ...] = (),
    *,
    version: str = "",
    features: tuple[tuple[object, ...], ...] = (),
    probe: bool = False,
    fallback: bool = False,
    status: int = 200,
    outcome: str | None = None,
) -> Observation:
    """An observation of a finished exchange of `model`."""
    return Observation(
        request_id=request_id,
        model=model,
        version=version,
        method="POST",
        path=f"/v2/models/{model.name}/infer",
        status=status,
        outcome=outcome or ("decided" if verdicts else "passed"),
        verdicts=verdicts,
        features=features,
        flags=(),
        errors=0,
        sampled=False,
        breaker="",
        fallback=fallback,
        probe=probe,
        threshold_version="static",
        upstream_seconds=0.001,
    )


def admitted_breaker(admission: Admission = Admission.PASS) -> tuple[CircuitBreaker, Admission]:
    """A closed breaker and an admission, for exchanges built by hand."""
    return CircuitBreaker(BreakerSpec()), admission
