"""Tests for the circuit breaker, driven by a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from guardproxy.breaker.state import Admission, CircuitBreaker, Transition
from guardproxy.hotpath.admission import Admitted, BreakerCall
from guardproxy.policy.models import BreakerSpec


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    clock: FakeClock, events: list[Transition] | None = None, **spec: object
) -> CircuitBreaker:
    base: dict[str, object] = {
        "trip": [
            {"when": "drift.score.psi", "above": 0.25, "windows": 3},
            {"when": "fairness.disparate_impact", "below": 0.8, "windows": 2},
            {"when": "upstream.error_rate", "above": 0.5, "windows": 1},
        ],
        "cooldown": "30s",
        "half_open": {"probes": 5, "close_after_windows": 2},
        "window": "10s",
        "min_calls": 1,
    }
    base.update(spec)
    listeners = [events.append] if events is not None else []
    return CircuitBreaker(
        BreakerSpec.model_validate(base),
        clock=clock,
        listeners=listeners,
        region="sg",
        wall_clock=lambda: 1_700_000_000.0,
    )


def trip(breaker: CircuitBreaker) -> None:
    breaker.observe_window({"upstream.error_rate": 0.9})
    assert breaker.state_name == "open"


def test_trips_after_n_consecutive_windows_and_not_before() -> None:
    breaker = make(FakeClock())
    for _ in range(2):
        breaker.observe_window({"drift.score.psi": 0.3})
    assert breaker.state_name == "closed"
    assert breaker.admit() is Admission.PASS
    breaker.observe_window({"drift.score.psi": 0.3})
    assert breaker.state_name == "open"
    assert breaker.admit() is Admission.OPEN


def test_healthy_window_resets_the_streak_and_absent_monitor_keeps_it() -> None:
    breaker = make(FakeClock())
    breaker.observe_window({"drift.score.psi": 0.3})
    breaker.observe_window({"drift.score.psi": 0.3})
    breaker.observe_window({"drift.score.psi": 0.1})
    breaker.observe_window({"drift.score.psi": 0.3})
    breaker.observe_window({"fairness.disparate_impact": 0.9})  # psi absent: streak kept
    breaker.observe_window({"drift.score.psi": 0.3})
    assert breaker.state_name == "closed"
    assert breaker.status()["streaks"]["drift.score.psi>0.25x3"] == 2
    breaker.observe_window({"drift.score.psi": 0.3})
    assert breaker.state_name == "open"


def test_below_rule_trips() -> None:
    breaker = make(FakeClock())
    breaker.observe_window({"fairness.disparate_impact": 0.7})
    breaker.observe_window({"fairness.disparate_impact": 0.75})
    assert breaker.state_name == "open"
    assert "fairness.disparate_impact<0.8x2" in breaker.status()["reason"]


def test_cooldown_moves_to_half_open_on_admit_or_tick() -> None:
    clock = FakeClock()
    breaker = make(clock)
    trip(breaker)
    clock.now += 29.9
    assert breaker.admit() is Admission.OPEN
    assert breaker.retry_after() == 1
    clock.now += 0.1
    assert breaker.admit() is Admission.PROBE
    assert breaker.state_name == "half_open"
    other = make(clock)
    trip(other)
    assert other.retry_after() == 30
    clock.now += 30
    other.tick()
    assert other.state_name == "half_open"


async def test_probe_cap_holds_under_many_concurrent_callers() -> None:
    clock = FakeClock()
    breaker = make(clock)
    trip(breaker)
    clock.now += 31

    async def caller() -> Admission:
        await asyncio.sleep(0)
        return breaker.admit()

    results = await asyncio.gather(*(caller() for _ in range(500)))
    assert results.count(Admission.PROBE) == 5
    assert results.count(Admission.OPEN) == 495
    assert breaker.status()["probes_admitted"] == 5


def half_open(clock: FakeClock, events: list[Transition] | None = None) -> CircuitBreaker:
    breaker = make(clock, events)
    trip(breaker)
    clock.now += 30
    assert breaker.admit() is Admission.PROBE
    return breaker


def test_closes_after_healthy_windows_with_probes_done() -> None:
    breaker = half_open(FakeClock())
    breaker.observe_window({"drift.score.psi": 0.1})  # no probe finished yet: does not count
    breaker.probe_done(ok=True)
    breaker.observe_window({"drift.score.psi": 0.1})
    assert breaker.state_name == "half_open"
    breaker.observe_window({"upstream.error_rate": 0.0})
    assert breaker.state_name == "closed"
    assert breaker.admit() is Admission.PASS
    assert all(v == 0 for v in breaker.status()["streaks"].values())


def test_reopens_on_failed_probe_and_on_unhealthy_window() -> None:
    clock = FakeClock()
    breaker = half_open(clock)
    breaker.probe_done(ok=False)
    assert breaker.state_name == "open"
    assert breaker.reason == "probe failed"
    assert breaker.admit() is Admission.OPEN
    clock.now += 30
    assert breaker.admit() is Admission.PROBE
    assert breaker.status()["probes_admitted"] == 1  # a new half-open period, a new budget
    breaker.observe_window({"drift.score.psi": 0.4})  # one crossing is enough in half-open
    assert breaker.state_name == "open"


def test_operator_states() -> None:
    breaker = make(FakeClock())
    breaker.force("forced_open", "maintenance")
    breaker.observe_window({"drift.score.psi": 0.0})
    assert breaker.admit() is Admission.OPEN
    assert breaker.retry_after() == 30
    breaker.force("disabled", "incident 42")
    for _ in range(5):
        breaker.observe_window({"upstream.error_rate": 1.0})
    assert breaker.admit() is Admission.PASS
    assert breaker.state_name == "disabled"
    breaker.force("closed", "back to automatic")
    breaker.observe_window({"upstream.error_rate": 1.0})
    assert breaker.state_name == "open"
    with pytest.raises(ValueError, match="cannot force state 'open'"):
        breaker.force("open", "no")  # type: ignore[arg-type]


def test_listeners_get_every_transition_with_reason_and_values() -> None:
    clock = FakeClock()
    events: list[Transition] = []
    breaker = half_open(clock, events)
    breaker.force("disabled", "on call")
    assert [(e.old, e.new) for e in events] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "disabled"),
    ]
    assert events[0].reason.startswith("tripped: upstream.error_rate>0.5x1")
    assert events[0].values["upstream.error_rate"] == 0.9
    assert events[1].reason == "cooldown elapsed"
    assert events[2].reason == "operator: on call"
    assert all(e.region == "sg" and e.at == 1_700_000_000.0 for e in events)


def test_broken_listener_does_not_stop_the_breaker() -> None:
    def broken(event: Transition) -> None:
        raise RuntimeError("boom")

    breaker = CircuitBreaker(BreakerSpec(), clock=FakeClock(), listeners=[broken])
    breaker.force("forced_open", "x")
    assert breaker.state_name == "forced_open"
    assert breaker.listener_errors == 1


def test_upstream_error_rate_window() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for status in (200, 500, None, 200, 503, 200):
        breaker.record_upstream(status, 0.01)
    clock.now += 9.9
    assert breaker.tick() is None
    clock.now += 0.1
    values = breaker.tick()
    assert values == {
        "upstream.error_rate": 0.5,
        "upstream.slow_call_rate": pytest.approx(1 / 6),
        "upstream.consecutive_5xx": 2.0,
    }
    assert breaker.state_name == "closed"  # 0.5 is not above 0.5
    breaker.record_upstream(502, 0.01)
    breaker.record_upstream(200, 2.0)
    clock.now += 10
    assert breaker.tick() == {
        "upstream.error_rate": 0.5,
        "upstream.slow_call_rate": 0.5,
        "upstream.consecutive_5xx": 1.0,
    }
    clock.now += 10
    assert breaker.tick() == {"upstream.consecutive_5xx": 0.0}


def test_consecutive_5xx_trips_across_windows() -> None:
    clock = FakeClock()
    breaker = make(clock, trip=[{"when": "upstream.consecutive_5xx", "above": 4}])
    for _ in range(3):
        breaker.record_upstream(500, 0.01)
    clock.now += 10
    breaker.tick()
    assert breaker.state_name == "closed"
    for _ in range(2):
        breaker.record_upstream(None, 5.0)
    clock.now += 10
    assert breaker.tick() == {
        "upstream.consecutive_5xx": 5.0,
        "upstream.error_rate": 1.0,
        "upstream.slow_call_rate": 1.0,
    }
    assert breaker.state_name == "open"


def test_status_is_json_ready() -> None:
    breaker = make(FakeClock())
    breaker.observe_window({"drift.score.psi": 0.3})
    status = breaker.status()
    assert status["state"] == "closed"
    assert status["since"] == "2023-11-14T22:13:20+00:00"
    assert status["last_window"] == {"drift.score.psi": 0.3}
    assert status["streaks"]["drift.score.psi>0.25x3"] == 1
    assert status["open_action"] == "reject"
    assert breaker.retry_after() == 10


def test_rates_count_only_from_min_calls_calls_a_window() -> None:
    clock = FakeClock()
    few = make(clock, min_calls=12)
    for _ in range(11):
        few.record_upstream(500, 0.01)
    clock.now += 10
    assert few.tick() == {"upstream.consecutive_5xx": 11.0}  # no rate from 11 calls
    assert few.state_name == "closed"
    for _ in range(12):
        few.record_upstream(500, 0.01)
    clock.now += 10
    assert few.tick()["upstream.error_rate"] == 1.0  # type: ignore[index]
    assert few.state_name == "open"


def test_a_released_probe_slot_is_taken_again_and_a_stale_release_is_ignored() -> None:
    clock = FakeClock()
    breaker = make(clock)
    trip(breaker)
    clock.now += 30
    admitted = [breaker.admit() for _ in range(5)]
    assert admitted == [Admission.PROBE] * 5 and breaker.admit() is Admission.OPEN
    epoch = breaker.epoch
    breaker.release_probe(epoch)  # a probe that ended with a 413
    assert breaker.admit() is Admission.PROBE and breaker.status()["probes_released"] == 1
    breaker.probe_done(ok=False)  # re-opens; a later half-open is a new epoch
    clock.now += 30
    assert breaker.admit() is Admission.PROBE
    breaker.release_probe(epoch)  # from the old half-open: must not free a new slot
    assert breaker.probes_admitted == 1


def test_a_probe_of_an_earlier_half_open_that_answers_late_counts_for_none() -> None:
    clock = FakeClock()
    breaker = make(clock, half_open={"probes": 5, "max_seconds": "20s"})
    trip(breaker)
    clock.now += 30
    calls = [BreakerCall(Admitted(breaker, breaker.admit(), False)) for _ in range(2)]
    calls[0].settle(503, 0.1)  # one probe fails: open again; the other waits on a slow model
    assert breaker.state_name == "open"
    clock.now += 30
    assert breaker.admit() is Admission.PROBE  # a new half-open, whose probe never answers
    calls[1].settle(200, 50.0)  # the earlier probe answers now
    clock.now += 20
    breaker.tick()
    assert breaker.state_name == "open" and "without a successful probe" in breaker.reason
    clock.now += 30
    late = BreakerCall(Admitted(breaker, breaker.admit(), False))  # hangs past max_seconds
    clock.now += 30
    breaker.tick()
    assert breaker.state_name == "open"
    clock.now += 30
    breaker.tick()
    late.settle(None, 60.0)  # its read timeout does not re-open the next half-open
    assert breaker.state_name == "half_open"


def test_half_open_ends_within_max_seconds_either_way() -> None:
    clock = FakeClock()
    quiet = make(clock, half_open={"probes": 5, "max_seconds": "20s"})
    trip(quiet)
    clock.now += 30
    quiet.tick()
    assert quiet.state_name == "half_open"
    clock.now += 20
    quiet.tick()
    assert quiet.state_name == "open" and "without a successful probe" in quiet.reason
    healthy = make(clock, half_open={"probes": 5, "max_seconds": "20s", "close_after_windows": 9})
    trip(healthy)
    clock.now += 30
    assert healthy.admit() is Admission.PROBE
    healthy.probe_done(ok=True)
    clock.now += 20
    healthy.tick()
    assert healthy.state_name == "closed" and "1 probes ok" in healthy.reason


def test_a_drift_trip_not_yet_disproved_reopens_at_max_seconds_despite_good_probes() -> None:
    clock = FakeClock()
    breaker = make(clock, half_open={"probes": 5, "max_seconds": "20s"})
    for _ in range(3):
        breaker.observe_window({"drift.score.psi": 0.4})
    assert breaker.state_name == "open"
    clock.now += 30
    assert breaker.admit() is Admission.PROBE
    breaker.probe_done(ok=True)
    assert breaker.pending == {"drift.score.psi"}  # no drift window from the probes yet
    clock.now += 20
    breaker.tick()
    assert breaker.state_name == "open"
    assert "drift.score.psi not shown healthy" in breaker.reason


def test_the_upstream_window_and_slow_calls_are_as_long_as_the_policy_says() -> None:
    clock = FakeClock()
    breaker = make(
        clock,
        window="3s",
        slow_call="250ms",
        trip=[{"when": "upstream.slow_call_rate", "above": 0.6}],
    )
    for seconds in (0.1, 0.3, 0.2, 0.5):  # two of four slower than 250 ms
        breaker.record_upstream(200, seconds)
    clock.now += 2.9
    assert breaker.tick() is None
    clock.now += 0.1
    assert breaker.tick() == {
        "upstream.error_rate": 0.0,
        "upstream.slow_call_rate": 0.5,
        "upstream.consecutive_5xx": 0.0,
    }
    assert breaker.retry_after() == 3 and breaker.state_name == "closed"
    for seconds in (0.3, 0.3, 0.2):
        breaker.record_upstream(200, seconds)
    clock.now += 3
    breaker.tick()
    assert breaker.state_name == "open" and "upstream.slow_call_rate>0.6" in breaker.reason


@pytest.mark.parametrize("needed", [1, 3])
def test_half_open_closes_after_as_many_healthy_windows_as_the_policy_says(needed: int) -> None:
    clock = FakeClock()
    breaker = make(clock, half_open={"probes": 5, "close_after_windows": needed})
    trip(breaker)
    clock.now += 30
    assert breaker.admit() is Admission.PROBE
    breaker.probe_done(ok=True)
    for _ in range(needed - 1):
        breaker.observe_window({"upstream.error_rate": 0.0})
    assert breaker.state_name == "half_open"
    breaker.observe_window({"upstream.error_rate": 0.0})
    assert breaker.state_name == "closed"
