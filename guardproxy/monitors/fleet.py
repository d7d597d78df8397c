"""FleetView: every model of the pod ranked by how badly it behaves right now, with reasons.

"ML to monitor ML": a pod serving many models needs one place that says which one is
breaking bad. A model's score adds up its problems: an open breaker, drift alarms against
the alarm lines, fairness bounds violated beyond noise, failed, slow or unscored answers,
watched inputs no request carries. `GET /status/models`, `guardproxy top` and the
`guardproxy_model_health` series all read `FleetView.rows()` (the series one row at a time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from guardproxy.breaker.board import BreakerBoard
from guardproxy.breaker.window import SLOW_CALL_RATE
from guardproxy.monitors.engine import FairnessEngine
from guardproxy.monitors.health import ModelHealth
from guardproxy.monitors.watchdog import Watchdog
from guardproxy.policy.table import CompiledModel
from guardproxy.policy.thresholds import ModelKey

BREAKER_SEVERITY = {"open": 100.0, "forced_open": 60.0, "half_open": 50.0}
ALARM, WARNING, NOISE, MISSING = 40.0, 10.0, 2.0, 10.0
CRITICAL = 40.0  # a problem this severe makes the model critical
KINDS = ("breaker", "drift", "fairness", "errors", "slow", "unscored", "missing_input")


class Sources(Protocol):
    """What the fleet view reads: each part's own status, never the hot path."""

    def drift_of(self, key: ModelKey) -> dict[str, Any]:
        """A model version's drift status (signals with values, alarms, warn; missing inputs)."""

    def fairness_of(self, key: ModelKey) -> dict[str, Any]:
        """A model version's fairness report."""

    def outcomes_of(self, region: str, model: str) -> dict[str, Any]:
        """A model's recent outcome counts and rates."""

    def version_of(self, region: str, model: str) -> str:
        """The model version that answered last."""


class Monitors:
    """The monitors the runtime runs, as the fleet view's sources."""

    def __init__(self, engine: FairnessEngine, watchdog: Watchdog, health: ModelHealth) -> None:
        self.engine, self.watchdog, self.health = engine, watchdog, health

    def drift_of(self, key: ModelKey) -> dict[str, Any]:
        """The watchdog's status of a model version."""
        return self.watchdog.model_status(key)

    def fairness_of(self, key: ModelKey) -> dict[str, Any]:
        """The engine's report of a model version."""
        return self.engine.report(key)

    def outcomes_of(self, region: str, model: str) -> dict[str, Any]:
        """How the model's recent answers ended."""
        return self.health.recent((region, model))

    def version_of(self, region: str, model: str) -> str:
        """The model version that answered last ("" before any answer)."""
        return self.health.versions.get((region, model), "")


@dataclass(slots=True)
class Problem:
    """One reason a model ranks where it does."""

    kind: str
    severity: float
    text: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view."""
        return {"kind": self.kind, "severity": round(self.severity, 2), "text": self.text}


@dataclass(slots=True)
class Row:
    """One model's line of the fleet view."""

    region: str
    model: str
    version: str
    breaker: str
    problems: list[Problem] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """How badly the model behaves: the sum of its problems' severities."""
        return sum(p.severity for p in self.problems)

    @property
    def state(self) -> str:
        """critical, warning or ok."""
        if any(p.severity >= CRITICAL for p in self.problems):
            return "critical"
        return "warning" if self.problems else "ok"

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view, worst problem first."""
        problems = sorted(self.problems, key=lambda p: -p.severity)
        return {
            "region": self.region,
            "model": self.model,
            "version": self.version,
            "score": round(self.score, 2),
            "state": self.state,
            "breaker": self.breaker,
            "problems": [p.as_dict() for p in problems],
            **self.details,
        }


class FleetView:
    """Ranks the declared models of every region, worst first."""

    def __init__(
        self,
        board: BreakerBoard,
        sources: Sources,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.board, self.sources, self.clock = board, sources, clock

    def rows(self) -> list[Row]:
        """Every declared model's row, worst first (ties by region and name)."""
        return sorted(self.each_row(), key=lambda r: (-r.score, r.region, r.model))

    def each_row(self) -> Iterator[Row]:
        """Every declared model's row in policy order, one at a time (a reader may yield)."""
        for entry in self.board.policies.current.regions.values():
            for model in entry.models:
                yield self.row(model)

    def row(self, model: CompiledModel) -> Row:
        """One model's problems and the figures behind them."""
        region, name = model.region, model.name
        version = self.sources.version_of(region, name)
        key = (region, name, version)
        breaker = self.board.breaker(region, name)
        state = breaker.state_name if breaker is not None else "closed"
        row = Row(region, name, version, state)
        if breaker is not None:
            _breaker_problems(row, state, breaker.reason, breaker.last_values)
        drift = self.sources.drift_of(key)
        fairness = self.sources.fairness_of(key)
        outcomes = self.sources.outcomes_of(region, name)
        _drift_problems(row, drift)
        _fairness_problems(row, fairness)
        _outcome_problems(row, outcomes)
        row.details = {
            "drift": drift.get("signals", {}),
            "fairness": {
                "bounds": fairness.get("bounds", {}),
                "labels": sum(g.get("labeled", 0) for g in fairness.get("groups", {}).values()),
            },
            "outcomes": outcomes,
        }
        return row

    def status(self) -> dict[str, Any]:
        """The JSON of GET /status/models."""
        return {"generated_at": self.clock(), "models": [r.as_dict() for r in self.rows()]}


def _breaker_problems(row: Row, state: str, reason: str, values: Mapping[str, float]) -> None:
    if state in BREAKER_SEVERITY:
        row.problems.append(
            Problem("breaker", BREAKER_SEVERITY[state], f"breaker {state}: {reason}")
        )
    slow = values.get(SLOW_CALL_RATE, 0.0)
    if slow > 0:
        row.problems.append(Problem("slow", 20.0 * slow, f"{slow:.0%} of calls slow"))


def _drift_problems(row: Row, drift: Mapping[str, Any]) -> None:
    for signal, last in sorted(drift.get("signals", {}).items()):
        alarms = [test for test, on in last.get("alarms", {}).items() if on]
        values = ", ".join(f"{k} {v:.3g}" for k, v in sorted(last.get("values", {}).items()))
        if alarms:
            text = f"{signal} drift alarm ({', '.join(alarms)}): {values}"
            row.problems.append(Problem("drift", ALARM, text))
        elif last.get("warn"):
            row.problems.append(Problem("drift", WARNING, f"{signal} drift warning: {values}"))
    for name in drift.get("missing_inputs", []):
        text = f"watched input {name!r} is in no request"
        row.problems.append(Problem("missing_input", MISSING, text))


def _fairness_problems(row: Row, fairness: Mapping[str, Any]) -> None:
    for name, check in sorted(fairness.get("bounds", {}).items()):
        if not check.get("violated"):
            continue
        low, high = check.get("ci95", [None, None])
        text = (
            f"{name.replace('_', ' ')} {check['value']:.3g} beyond {check['bound']:g}"
            f" (95% CI {low:.3g}-{high:.3g}, groups {' vs '.join(check.get('groups', []))})"
        )
        if check.get("significant"):
            row.problems.append(Problem("fairness", ALARM, text))
        else:
            row.problems.append(Problem("fairness", NOISE, text + ", not significant"))


def _outcome_problems(row: Row, outcomes: Mapping[str, Any]) -> None:
    rates = outcomes.get("rates", {})
    failed, unscored = rates.get("error", 0.0), rates.get("unscored", 0.0)
    if failed > 0:
        row.problems.append(Problem("errors", 80.0 * failed, f"{failed:.0%} of answers failed"))
    if unscored > 0:
        text = f"{unscored:.0%} of answers unscored (no score where the policy says)"
        row.problems.append(Problem("unscored", 60.0 * unscored, text))
