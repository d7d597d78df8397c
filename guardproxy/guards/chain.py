"""Builds a policy's guard chain: groups, decision, labels, then sampling of the final answer."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..exchange import Exchange
from ..payloads import compile_payload
from ..policy.models import Policy
from ..sinks import SampleQueue
from ..snapshots import Snapshot, ThresholdTable
from .base import Guard, GuardChain
from .groups import ANY, OTHER, GroupGuard
from .labels import LabelGuard
from .sampling import SamplingGuard
from .thresholds import DecisionGuard


@dataclass(frozen=True, slots=True)
class GuardContext:
    """What guards share across policies: learned thresholds, the sample queue, a clock."""

    thresholds: Snapshot[ThresholdTable] = field(default_factory=lambda: Snapshot(ThresholdTable()))
    samples: SampleQueue | None = None
    clock: Callable[[], float] = time.monotonic


class SampledChain(GuardChain):
    """A chain whose last guard observes every final answer, even a blocked one."""

    __slots__ = ("observer",)

    def __init__(self, guards: Sequence[Guard], observer: Guard) -> None:
        super().__init__([*guards, observer])
        self.observer = observer

    async def on_response(self, ex: Exchange) -> None:
        """Run the guards until one replies, then always the observer."""
        for guard in self.guards[:-1]:
            if ex.reply is not None:
                break
            await self._run(guard, ex)
        await self._run(self.observer, ex)

    async def _run(self, guard: Guard, ex: Exchange) -> None:
        try:
            await guard.on_response(ex)
        except Exception as exc:  # a guard never takes the proxy down
            self._failed(guard, ex, exc)


def build_chain(policy: Policy, ctx: GuardContext, version: str) -> GuardChain:
    """The policy's guards in order, skipping those with nothing to do (ValueError if invalid)."""
    payload = compile_payload(policy.model, policy.labels, policy.decision)
    guards: list[Guard] = []
    if policy.groups.attribute is not None:
        guards.append(GroupGuard(policy.groups, payload))
    if policy.model.protocol != "openai" or policy.model.score.path is not None:
        missing = OTHER if policy.groups.attribute is not None else ANY
        guards.append(DecisionGuard(policy.decision, payload, ctx.thresholds, missing))
    if policy.labels.deny:
        guards.append(LabelGuard(policy.labels, payload))
    if ctx.samples is None:
        return GuardChain(guards)
    return SampledChain(guards, SamplingGuard(policy.sampling, ctx.samples, version, ctx.clock))
