"""Builds a policy's guard chain: groups, decision, labels, then sampling of the final answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from guardproxy.guards.base import Guard, GuardChain
from guardproxy.guards.draws import Draws
from guardproxy.guards.groups import ANY, OTHER, GroupGuard
from guardproxy.guards.labels import LabelGuard
from guardproxy.guards.sampling import SamplingGuard
from guardproxy.guards.thresholds import DecisionGuard
from guardproxy.payloads import compile_payload
from guardproxy.policy.models import Policy
from guardproxy.policy.thresholds import Snapshot, ThresholdTable
from guardproxy.sampling.sinks import SampleQueue


@dataclass(frozen=True, slots=True)
class GuardContext:
    """What guards share across policies: learned thresholds, samples, the decision key, a clock."""

    thresholds: Snapshot[ThresholdTable] = field(default_factory=lambda: Snapshot(ThresholdTable()))
    samples: SampleQueue | None = None
    clock: Callable[[], float] = time.monotonic
    draws: Draws = field(default_factory=Draws)


def build_chain(policy: Policy, ctx: GuardContext, version: str) -> GuardChain:
    """The policy's guards in order, skipping those with nothing to do (ValueError if invalid)."""
    payload = compile_payload(policy.model, policy.labels, policy.decision)
    guards: list[Guard] = []
    if policy.groups.attribute is not None:
        guards.append(GroupGuard(policy.groups, payload))
    if policy.model.protocol != "openai" or policy.model.score.path is not None:
        missing = OTHER if policy.groups.attribute is not None else ANY
        guards.append(DecisionGuard(policy.decision, payload, ctx.thresholds, missing, ctx.draws))
    if policy.labels.deny:
        guards.append(LabelGuard(policy.labels, payload))
    if ctx.samples is None:
        return GuardChain(guards)
    sampling = SamplingGuard(policy.sampling, ctx.samples, version, ctx.clock, ctx.draws)
    return GuardChain(guards, sampling)
