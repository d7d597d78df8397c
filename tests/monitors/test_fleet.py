"""FleetView and ModelHealth: problems found, severities, ranking, outcome windows."""

from __future__ import annotations

from typing import Any

from guardproxy.breaker.board import BreakerBoard
from guardproxy.guards.exchange import Verdict
from guardproxy.monitors.fleet import FleetView
from guardproxy.monitors.health import BUCKET, BUCKETS, ModelHealth
from guardproxy.policy.models import Policy
from guardproxy.policy.table import PolicyTable, compile_policy
from guardproxy.policy.thresholds import ModelKey, Snapshot
from tests.factories import observation


class Sources:
    """Monitor figures set by hand."""

    def __init__(self) -> None:
        self.drift: dict[str, dict[str, Any]] = {}
        self.fairness: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}

    def drift_of(self, key: ModelKey) -> dict[str, Any]:
        return self.drift.get(key[1], {})

    def fairness_of(self, key: ModelKey) -> dict[str, Any]:
        return self.fairness.get(key[1], {})

    def outcomes_of(self, region: str, model: str) -> dict[str, Any]:
        return self.outcomes.get(model, {})

    def version_of(self, region: str, model: str) -> str:
        return "7" if model == "b" else ""


def view(*names: str) -> tuple[FleetView, Sources, BreakerBoard]:
    policy = Policy.model_validate({"region": "eu", "models": [{"name": n} for n in names]})
    board = BreakerBoard(Snapshot(PolicyTable({"eu": compile_policy(policy)}, "eu")))
    sources = Sources()
    return FleetView(board, sources, clock=lambda: 5.0), sources, board


def test_a_healthy_fleet_is_ok_and_sorted_by_name() -> None:
    fleet, _, _ = view("b", "a")
    status = fleet.status()
    assert [(m["model"], m["state"], m["score"]) for m in status["models"]] == [
        ("a", "ok", 0),
        ("b", "ok", 0),
    ]
    assert status["models"][1]["version"] == "7" and status["generated_at"] == 5.0


def test_each_problem_counts_and_the_worst_model_comes_first() -> None:
    fleet, sources, board = view("calm", "drifty", "unfair", "broken", "noisy")
    sources.drift["drifty"] = {
        "signals": {"age": {"values": {"psi": 0.4}, "alarms": {"psi": True}, "warn": True}},
        "missing_inputs": ["zip"],
    }
    check = {"value": 0.5, "bound": 0.8, "ci95": [0.4, 0.6], "groups": ["F", "M"]}
    sources.fairness["unfair"] = {
        "bounds": {"disparate_impact": {**check, "violated": True, "significant": True}},
        "groups": {"F": {"labeled": 30}, "M": {"labeled": 50}},
    }
    sources.fairness["noisy"] = {
        "bounds": {"disparate_impact": {**check, "violated": True, "significant": False}}
    }
    sources.outcomes["broken"] = {"rates": {"error": 0.5, "unscored": 0.25}}
    board.force("eu", "forced_open", "release", model="calm")
    rows = {r.model: r for r in fleet.rows()}
    ranked = [(r.model, r.score) for r in fleet.rows()]
    assert ranked == [
        ("calm", 60.0), ("broken", 55.0), ("drifty", 50.0), ("unfair", 40.0), ("noisy", 2.0)
    ]  # fmt: skip
    assert rows["calm"].problems[0].kind == "breaker" and rows["calm"].state == "critical"
    assert {p.kind for p in rows["drifty"].problems} == {"drift", "missing_input"}
    assert "age drift alarm (psi)" in rows["drifty"].problems[0].text
    assert rows["unfair"].score == 40 and "95% CI 0.4-0.6" in rows["unfair"].problems[0].text
    assert rows["noisy"].state == "warning" and "not significant" in rows["noisy"].problems[0].text
    assert rows["broken"].score == 80 * 0.5 + 60 * 0.25
    assert rows["unfair"].as_dict()["fairness"]["labels"] == 80


def test_health_counts_answers_per_model_over_the_recent_window() -> None:
    now = [1000.0]
    health = ModelHealth(clock=lambda: now[0])
    model = view("m")[2].policies.current.regions["eu"].models[0]
    decided = observation(model, "r", (Verdict("*", 0.9, 0.5, 1),) * 3, version="2")
    failed = observation(model, "f", status=502, outcome="error")
    health.consume([decided, decided, failed])
    recent = health.recent(("eu", "m"))
    assert recent["recent"]["decided"] == 2 and recent["recent"]["error"] == 1
    assert recent["rates"]["error"] == 1 / 3 and health.versions[("eu", "m")] == "2"
    now[0] += BUCKET * BUCKETS
    health.consume([decided])
    later = health.recent(("eu", "m"))
    assert later["recent"]["decided"] == 1 and later["total"]["decided"] == 3
    assert health.recent(("eu", "other"))["rates"] == {}
