"""The policy sections the monitors read: drift, fairness, and the circuit breaker."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from guardproxy.policy.basics import Duration, Rate, Strict


class SignalSpec(Strict):
    """A monitored signal: a named input feature, numeric or categorical."""

    input: str
    kind: Literal["numeric", "categorical"] = "numeric"


class ReferenceSpec(Strict):
    """Where the reference distribution comes from."""

    warmup: int = Field(default=1000, ge=10)
    baseline: str | None = None  # JSON file written by `guardproxy baseline`


class PsiSpec(Strict):
    """Population stability index bounds."""

    warn: float = Field(default=0.1, ge=0)
    alarm: float = Field(default=0.25, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> PsiSpec:
        if self.warn > self.alarm:
            raise ValueError(f"psi warn {self.warn} is above alarm {self.alarm}")
        return self


class PValueSpec(Strict):
    """A test that alarms below a family-wise p-value."""

    p_value: Rate = 0.01


class JsSpec(Strict):
    """Jensen-Shannon distance bound."""

    alarm: float = Field(default=0.1, ge=0, le=1)


class DriftTests(Strict):
    """Which tests run on each window, with their bounds."""

    psi: PsiSpec | None = PsiSpec()
    ks: PValueSpec | None = PValueSpec()
    js: JsSpec | None = None
    chi2: PValueSpec | None = PValueSpec()


class DriftSpec(Strict):
    """Drift monitoring of the score and input features."""

    reference: ReferenceSpec = ReferenceSpec()
    window: int = Field(default=1000, ge=10)
    window_seconds: Duration | None = None
    signals: tuple[Literal["score"] | SignalSpec, ...] = ("score",)
    bins: int = Field(default=10, ge=2, le=1000)
    tests: DriftTests = DriftTests()
    correction: Literal["bonferroni", "none"] = "bonferroni"


class MinRatio(Strict):
    """A lower bound on a ratio."""

    min_ratio: Rate = 0.8


class MaxDifference(Strict):
    """An upper bound on a difference."""

    max_difference: Rate = 0.1


class FairnessSpec(Strict):
    """Fairness bounds the monitors check, per region."""

    disparate_impact: MinRatio | None = MinRatio()
    equal_opportunity: MaxDifference | None = MaxDifference()
    bins: int = Field(default=100, ge=10, le=10_000)  # score histogram resolution
    window: int = Field(default=1000, ge=10)  # decisions (parity), labels (opportunity) a window


TRIP_MONITORS = re.compile(
    r"^(drift\.[\w.-]+\.(psi|ks|js|chi2)"
    r"|fairness\.(disparate_impact|equal_opportunity_difference|demographic_parity_difference"
    r"|equalized_odds_difference)"
    r"|upstream\.(error_rate|consecutive_5xx|slow_call_rate))$"
)


class TripRule(Strict):
    """Open the breaker when a monitor crosses a value for N consecutive windows."""

    when: str
    above: float | None = None
    below: float | None = None
    windows: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _valid(self) -> TripRule:
        if TRIP_MONITORS.match(self.when) is None:
            raise ValueError(
                f"unknown monitor {self.when!r} (expected drift.<signal>.psi|ks|js|chi2, "
                "fairness.disparate_impact|equal_opportunity_difference|..., "
                "upstream.error_rate|consecutive_5xx|slow_call_rate)"
            )
        if (self.above is None) == (self.below is None):
            raise ValueError("a trip rule needs exactly one of above, below")
        return self


class OpenSpec(Strict):
    """What the proxy does while the breaker is open."""

    action: Literal["reject", "fallback", "flag"] = "reject"
    upstream: str | None = None

    @model_validator(mode="after")
    def _fallback_has_upstream(self) -> OpenSpec:
        if self.action == "fallback" and not self.upstream:
            raise ValueError("open.action 'fallback' needs open.upstream")
        return self


class HalfOpenSpec(Strict):
    """Probing after the cooldown."""

    probes: int = Field(default=20, ge=1)
    close_after_windows: int = Field(default=2, ge=1)
    max_seconds: Duration = 120.0  # then close (a probe succeeded, none failed) or re-open


class BreakerSpec(Strict):
    """Circuit breaker rules."""

    trip: tuple[TripRule, ...] = ()
    open: OpenSpec = OpenSpec()
    cooldown: Duration = 60.0
    half_open: HalfOpenSpec = HalfOpenSpec()
    window: Duration = 10.0  # upstream health window
    slow_call: Duration = 1.0  # an upstream call slower than this is slow
    min_calls: int = Field(default=20, ge=1)  # error_rate / slow_call_rate need this many calls
