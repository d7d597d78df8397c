"""Builds a model's guard chain: groups, decision, labels, then sampling of the final answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from guardproxy.guards.base import Guard, GuardChain
from guardproxy.guards.draws import Draws
from guardproxy.guards.exchange import MAX_ROWS
from guardproxy.guards.features import feature_reader
from guardproxy.guards.groups import ANY, OTHER, GroupGuard
from guardproxy.guards.labels import LabelGuard
from guardproxy.guards.sampling import SamplingGuard
from guardproxy.guards.thresholds import DecisionGuard
from guardproxy.payloads import compile_payload
from guardproxy.payloads.binary_bodies import binary_reads
from guardproxy.payloads.chatstream import TermScanner
from guardproxy.policy.models import ModelPolicy
from guardproxy.policy.thresholds import Snapshot, ThresholdTable
from guardproxy.sampling.sinks import SampleQueue


@dataclass(frozen=True, slots=True)
class GuardContext:
    """What guards share across policies: learned thresholds, samples, the decision key, a clock."""

    thresholds: Snapshot[ThresholdTable] = field(default_factory=lambda: Snapshot(ThresholdTable()))
    samples: SampleQueue | None = None
    clock: Callable[[], float] = time.monotonic
    draws: Draws = field(default_factory=Draws)
    max_rows: int = MAX_ROWS


def build_chain(region: str, spec: ModelPolicy, version: str, ctx: GuardContext) -> GuardChain:
    """A model's guards in order, skipping those with nothing to do (ValueError if invalid)."""
    payload = compile_payload(spec)
    guards: list[Guard] = []
    if spec.groups.attribute is not None:
        guards.append(GroupGuard(spec.groups, payload, ctx.max_rows))
    if spec.protocol != "openai" or spec.score.path is not None:
        missing = OTHER if spec.groups.attribute is not None else ANY
        key = (region, spec.name)
        guards.append(
            DecisionGuard(
                spec.decision, payload, ctx.thresholds, key, missing, ctx.draws, ctx.max_rows
            )
        )
    if spec.labels.deny:
        guards.append(LabelGuard(spec.labels, payload, ctx.max_rows))
    features = feature_reader(payload, [s.input for s in spec.signal_specs()])
    binary, terms = binary_reads(spec, ctx.max_rows), stream_terms(spec)
    if ctx.samples is None:
        return GuardChain(guards, features=features, binary=binary, terms=terms)
    sampling = SamplingGuard(spec.sampling, ctx.samples, version, ctx.clock, ctx.draws)
    return GuardChain(guards, sampling, features, binary, terms)


def stream_terms(spec: ModelPolicy) -> TermScanner | None:
    """The label guard's terms for streamed chat answers (flag: found and marked, not denied)."""
    if spec.protocol != "openai" or not spec.labels.deny:
        return None
    if spec.labels.action == "flag":
        return TermScanner((), flag=spec.labels.deny)
    return TermScanner(spec.labels.deny)  # block, and suppress (a sent word cannot be masked)
