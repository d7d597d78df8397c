"""BreakerBoard: one breaker per (region, model), rebuilt on swap, operator force, ticker."""

from __future__ import annotations

import logging

import pytest

from guardproxy.breaker.board import BreakerBoard, describe
from guardproxy.breaker.state import Admission, Transition
from guardproxy.hotpath.admission import settle
from guardproxy.policy.thresholds import Snapshot
from tests.breaker.tables import model, table

RULE = {"when": "upstream.error_rate", "above": 0.5, "windows": 1}


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Telemetry that remembers what the board told it."""

    def __init__(self) -> None:
        self.transitions: list[Transition] = []
        self.states: list[tuple[str, str, str]] = []

    def breaker_transition(self, transition: Transition) -> None:
        self.transitions.append(transition)

    def breaker_state(self, region: str, model: str, state: str) -> None:
        self.states.append((region, model, state))


def test_one_breaker_per_model_and_state_kept_when_spec_unchanged() -> None:
    snapshot = Snapshot(table(sg={"trip": [RULE]}, us={"trip": [RULE]}))
    board = BreakerBoard(snapshot)
    sg, us = board.breaker("sg", "fraud"), board.breaker("us", "fraud")
    assert sg is not None and us is not None and sg is not us
    assert board.breaker("sg", "credit") not in (None, sg)
    sg.force("forced_open", "maintenance")
    snapshot.publish(table(sg={"trip": [RULE]}, us={"trip": [RULE], "cooldown": 5}))
    board.tick()
    assert board.breaker("sg", "fraud") is sg and sg.state_name == "forced_open"
    renewed = board.breaker("us", "fraud")
    assert renewed is not None and renewed is not us and renewed.spec.cooldown == 5


def test_upstream_errors_trip_on_tick_and_every_transition_is_logged_counted_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, recorder = Clock(), Recorder()
    spec = {"trip": [RULE], "window": 2, "min_calls": 1}
    board = BreakerBoard(Snapshot(table(sg=spec)), telemetry=recorder, clock=clock)
    breaker = board.breaker("sg", "fraud")
    assert breaker is not None and ("sg", "fraud", "closed") in recorder.states
    for status in (500, 502, None, 200):
        settle(breaker, status, 0.01, probe=False)
    clock.now += 2.5
    with caplog.at_level(logging.WARNING, "guardproxy.breaker"):
        board.tick()
    assert breaker.state_name == "open"
    assert board.transitions == {"sg/fraud:open": 1}
    assert recorder.transitions[0].new == "open" and recorder.transitions[0].model == "fraud"
    line = caplog.records[-1].getMessage()
    assert "sg/fraud: closed -> open" in line and "upstream.error_rate=0.75" in line
    status = board.status()["models"]
    assert status["sg/fraud"]["state"] == "open" and status["sg/credit"]["state"] == "closed"
    assert status["sg/fraud"]["last_window"]["upstream.error_rate"] == 0.75


def test_force_rejects_unknown_region_model_and_bad_state() -> None:
    board = BreakerBoard(Snapshot(table(sg={})))
    with pytest.raises(KeyError):
        board.force("nowhere", "closed", "")
    with pytest.raises(KeyError, match="no model 'other'"):
        board.force("sg", "closed", "", model="other")
    with pytest.raises(ValueError, match="forced_open, closed or disabled"):
        board.force("sg", "half_open", "")
    result = board.force("sg", "disabled", "load test")
    assert result["sg/fraud"]["reason"] == "operator: load test" and len(result) == 2


def test_a_failing_ticker_is_counted_and_the_others_still_run() -> None:
    board = BreakerBoard(Snapshot(table()))
    ran: list[int] = []
    board.tickers += [lambda: 1 / 0, lambda: ran.append(1)]  # type: ignore[list-item]
    board.tick()
    assert ran == [1] and board.ticker_errors == 1


def test_probe_outcome_goes_to_the_half_open_state() -> None:
    clock = Clock()
    spec = {"trip": [RULE], "window": 1, "cooldown": 5, "half_open": {"probes": 1}, "min_calls": 1}
    board = BreakerBoard(Snapshot(table(sg=spec)), clock=clock)
    breaker = board.breaker("sg", "fraud")
    assert breaker is not None
    settle(breaker, None, 0.1, probe=False)
    clock.now += 1
    board.tick()
    assert breaker.admit() is Admission.OPEN
    clock.now += 5
    assert breaker.admit() is Admission.PROBE and breaker.admit() is Admission.OPEN
    settle(breaker, 200, 0.1, probe=True)
    assert breaker.probes_ok == 1 and breaker.state_name == "half_open"
    board.tick()  # a healthy upstream window with a good probe counts toward closing
    assert breaker.healthy_windows == 1
    settle(breaker, 500, 0.1, probe=True)
    assert breaker.state_name == "open" and breaker.reason == "probe failed"


def test_describe_names_model_reason_and_numbers() -> None:
    event = Transition(
        "eu", "credit", "closed", "open", "tripped: x", {"drift.age.psi": 0.41234}, 0.0
    )
    assert describe(event) == (
        "breaker eu/credit: closed -> open (tripped: x); last window: drift.age.psi=0.4123"
    )


def test_each_model_has_its_own_breaker_and_upstream_failures_stay_there() -> None:
    clock = Clock()
    snapshot = Snapshot(table(sg={"trip": [RULE], "window": 1, "min_calls": 1}))
    board = BreakerBoard(snapshot, clock=clock)
    fraud = board.get(model(snapshot.current, "sg", "fraud"))
    credit = board.get(model(snapshot.current, "sg", "credit"))
    settle(credit, 200, 0.01, probe=False)
    settle(fraud, 500, 0.01, probe=False)
    settle(fraud, None, 0.01, probe=False)
    clock.now += 1
    board.tick()
    assert fraud.state_name == "open" and credit.state_name == "closed"
    assert "upstream.error_rate" in board.status()["models"]["sg/fraud"]["reason"]


def test_region_force_reaches_every_model_and_models_added_later() -> None:
    snapshot = Snapshot(table(sg={}))
    board = BreakerBoard(snapshot)
    forced = board.force("sg", "forced_open", "maintenance")
    assert set(forced) == {"sg/fraud", "sg/credit"}
    assert {v["state"] for v in forced.values()} == {"forced_open"}
    snapshot.publish(table(("fraud", "credit", "churn"), sg={"cooldown": 7}))
    board.tick()
    churn = board.breaker("sg", "churn")
    assert churn is not None and churn.state_name == "forced_open"  # born forced
    board.force("sg", "closed", "done")
    assert {b.state_name for b in board.breakers.values()} == {"closed"}
    assert board.status()["forced"] == {}


def test_model_force_touches_one_breaker() -> None:
    board = BreakerBoard(Snapshot(table(sg={})))
    result = board.force("sg", "forced_open", "bad release", model="fraud")
    assert list(result) == ["sg/fraud"] and result["sg/fraud"]["state"] == "forced_open"
    assert board.breaker("sg", "credit").state_name == "closed"  # type: ignore[union-attr]


def test_a_forced_model_stays_forced_when_its_breaker_is_rebuilt() -> None:
    snapshot = Snapshot(table(sg={}))
    board = BreakerBoard(snapshot)
    board.force("sg", "forced_open", "bad release", model="fraud")
    snapshot.publish(table(sg={"cooldown": 7}))  # a new spec: every breaker is rebuilt
    board.tick()
    fraud = board.breaker("sg", "fraud")
    assert fraud is not None and fraud.spec.cooldown == 7 and fraud.state_name == "forced_open"
    assert board.status()["forced"] == {
        "sg/fraud": {"state": "forced_open", "reason": "bad release"}
    }
    board.force("sg", "closed", "fixed", model="fraud")
    assert board.status()["forced"] == {} and fraud.state_name == "closed"


def test_a_removed_model_loses_its_breaker() -> None:
    snapshot = Snapshot(table(sg={}))
    board = BreakerBoard(snapshot)
    snapshot.publish(table(("credit",), sg={}))
    board.tick()
    assert board.breaker("sg", "fraud") is None and board.breaker("sg", "credit") is not None
