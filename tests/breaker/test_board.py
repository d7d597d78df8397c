"""BreakerBoard: breakers per region and path, rebuilt on swap, operator force, ticker, pools."""

from __future__ import annotations

import logging

import pytest

from guardproxy.breaker.board import SHARED, BreakerBoard, describe
from guardproxy.breaker.state import Admission, Transition
from guardproxy.hotpath.admission import settle
from guardproxy.policy.thresholds import Snapshot
from tests.breaker.tables import CREDIT, FRAUD, table

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
        self.states: list[tuple[str, str]] = []

    def breaker_transition(self, transition: Transition) -> None:
        self.transitions.append(transition)

    def breaker_state(self, region: str, state: str) -> None:
        self.states.append((region, state))


def test_one_breaker_per_region_and_state_kept_when_spec_unchanged() -> None:
    snapshot = Snapshot(table(sg={"trip": [RULE]}, us={"trip": [RULE]}))
    board = BreakerBoard(snapshot)
    sg, us = board.breaker("sg"), board.breaker("us")
    assert sg is not None and us is not None and sg is not us
    sg.force("forced_open", "maintenance")
    snapshot.publish(table(sg={"trip": [RULE]}, us={"trip": [RULE], "cooldown": 5}))
    board.tick()
    assert board.breaker("sg") is sg and sg.state_name == "forced_open"
    assert board.breaker("us") is not us and board.breaker("us").spec.cooldown == 5  # type: ignore[union-attr]


def test_upstream_errors_trip_on_tick_and_every_transition_is_logged_counted_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, recorder = Clock(), Recorder()
    spec = {"trip": [RULE], "window": 2, "min_calls": 1}
    board = BreakerBoard(Snapshot(table(sg=spec)), telemetry=recorder, clock=clock)
    breaker = board.breaker("sg")
    assert breaker is not None and ("sg", "closed") in recorder.states
    for status in (500, 502, None, 200):
        settle(breaker, status, 0.01, probe=False)
    clock.now += 2.5
    with caplog.at_level(logging.WARNING, "guardproxy.breaker"):
        board.tick()
    assert breaker.state_name == "open"
    assert board.transitions == {"sg:open": 1}
    assert recorder.transitions[0].new == "open"
    line = caplog.records[-1].getMessage()
    assert "sg: closed -> open" in line and "upstream.error_rate=0.75" in line
    status = board.status()["regions"]["sg"]
    assert status["state"] == "open" and status["routes"][SHARED]["state"] == "open"
    assert status["routes"][SHARED]["last_window"]["upstream.error_rate"] == 0.75


def test_force_rejects_unknown_region_and_bad_state() -> None:
    board = BreakerBoard(Snapshot(table(sg={})))
    with pytest.raises(KeyError):
        board.force("nowhere", "closed", "")
    with pytest.raises(ValueError, match="forced_open, closed or disabled"):
        board.force("sg", "half_open", "")
    assert board.force("sg", "disabled", "load test")["reason"] == "operator: load test"


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
    breaker = board.breaker("sg")
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


def test_describe_names_reason_and_numbers() -> None:
    event = Transition("eu", "closed", "open", "tripped: x", {"drift.age.psi": 0.41234}, 0.0)
    assert describe(event) == (
        "breaker eu: closed -> open (tripped: x); last window: drift.age.psi=0.4123"
    )


def trip(board: BreakerBoard, clock: Clock, path: str, region: str = "sg") -> None:
    """Two failed calls on one path's breaker, then a closed upstream window."""
    breaker = board.get(board.policies.current.regions[region], path)
    settle(breaker, 500, 0.01, probe=False)
    settle(breaker, None, 0.01, probe=False)
    clock.now += 1
    board.tick()


def test_each_guarded_path_has_its_own_breaker_and_upstream_failures_stay_there() -> None:
    clock, recorder = Clock(), Recorder()
    board = BreakerBoard(
        Snapshot(table(sg={"trip": [RULE], "window": 1, "min_calls": 1})),
        telemetry=recorder,
        clock=clock,
    )
    entry = board.policies.current.regions["sg"]
    credit = board.get(entry, CREDIT)
    settle(credit, 200, 0.01, probe=False)
    trip(board, clock, FRAUD)
    fraud = board.breaker("sg", FRAUD)
    assert fraud is not None and fraud is board.get(entry, FRAUD) and fraud is not credit
    assert fraud.state_name == "open" and credit.state_name == "closed"
    assert board.breaker("sg", SHARED).state_name == "closed"  # type: ignore[union-attr]
    assert recorder.states[-1] == ("sg", "open")  # the gauge shows the worst route
    assert board.breakers_of("sg") == [board.breaker("sg"), credit, fraud]
    status = board.status()["regions"]["sg"]
    assert status["state"] == "open" and "upstream.error_rate" in status["reason"]
    assert list(status["routes"]) == [SHARED, CREDIT, FRAUD]
    assert status["routes"][FRAUD]["route"] == FRAUD
    assert status["routes"][CREDIT]["state"] == "closed"


def test_paths_beyond_the_cap_share_the_region_wide_breaker_and_are_counted() -> None:
    clock = Clock()
    board = BreakerBoard(
        Snapshot(table(sg={"trip": [RULE], "window": 1, "min_calls": 1})), clock=clock, route_cap=2
    )
    entry = board.policies.current.regions["sg"]
    first, second = board.get(entry, FRAUD), board.get(entry, CREDIT)
    shared = board.breaker("sg")
    assert shared is not None and shared not in (first, second)
    assert board.get(entry, "/v2/models/a/infer") is shared
    assert board.get(entry, "/v2/models/b/infer") is shared
    assert board.get(entry, FRAUD) is first
    trip(board, clock, "/v2/models/c/infer")
    assert shared.state_name == "open" and first.state_name == second.state_name == "closed"
    status = board.status()["regions"]["sg"]
    assert status["overflow"] == 3 and status["cap"] == 2 and len(status["routes"]) == 3
    with pytest.raises(ValueError, match="cap 2 reached"):
        board.force("sg", "forced_open", "", route="/v2/models/a/infer")


def test_region_force_reaches_every_breaker_and_paths_yet_to_come() -> None:
    board = BreakerBoard(Snapshot(table(sg={})))
    entry = board.policies.current.regions["sg"]
    fraud = board.get(entry, FRAUD)
    forced = board.force("sg", "forced_open", "maintenance")
    assert forced["state"] == "forced_open" and set(forced["routes"]) == {SHARED, FRAUD}
    assert board.get(entry, CREDIT).state_name == "forced_open"  # born forced
    board.force("sg", "closed", "done")
    later = board.get(entry, "/v2/models/later/infer")
    assert {b.state_name for b in board.breakers_of("sg")} == {"closed"} and later is not fraud


def test_route_force_touches_one_breaker_and_names_unguarded_routes() -> None:
    board = BreakerBoard(Snapshot(table(routes=(FRAUD, CREDIT), sg={})))
    entry = board.policies.current.regions["sg"]
    credit = board.get(entry, CREDIT)
    result = board.force("sg", "forced_open", "bad release", route=FRAUD)  # no traffic yet
    assert result["route"] == FRAUD and result["state"] == "forced_open"
    assert board.get(entry, FRAUD).state_name == "forced_open"
    assert credit.state_name == "closed" and board.breaker("sg").state_name == "closed"  # type: ignore[union-attr]
    assert board.force("sg", "disabled", "", route=SHARED)["route"] == SHARED
    with pytest.raises(KeyError, match="does not guard '/v2/models/other/infer'"):
        board.force("sg", "closed", "", route="/v2/models/other/infer")


def test_a_swap_with_the_same_spec_keeps_route_breakers_the_new_routes_still_guard() -> None:
    snapshot = Snapshot(table(sg={"trip": [RULE]}))
    board = BreakerBoard(snapshot)
    entry = snapshot.current.regions["sg"]
    fraud, credit = board.get(entry, FRAUD), board.get(entry, CREDIT)
    fraud.force("forced_open", "t")
    snapshot.publish(table(routes=(FRAUD,), sg={"trip": [RULE]}))
    board.tick()
    assert board.breaker("sg", FRAUD) is fraud and board.breaker("sg", CREDIT) is None
    assert credit not in board.breakers_of("sg") and fraud.state_name == "forced_open"
    assert board.breakers_of("nowhere") == [] and board.breaker("nowhere") is None


def test_describe_names_the_route_of_a_route_breaker() -> None:
    event = Transition("eu", "closed", "open", "probe failed", {}, 0.0)
    assert describe(event, FRAUD) == (
        f"breaker eu {FRAUD}: closed -> open (probe failed); last window: none"
    )
