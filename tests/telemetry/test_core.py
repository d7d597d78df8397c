"""Telemetry: what its hooks count, what they refuse, and what a disabled instance adds."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from guardproxy.breaker.state import Transition
from guardproxy.state.base import PredictionRecord
from guardproxy.telemetry import NO_TRACER, Telemetry, TelemetryConfig
from guardproxy.transport import Request, ResponseWriter

from .conftest import key, samples


def test_counters_and_gauges_reach_prometheus_text() -> None:
    telemetry = Telemetry(TelemetryConfig(), "http://127.0.0.1:1")
    telemetry.count_feedback("sg", "credit", "female", "tp")
    telemetry.count_feedback("sg", "credit", "female", "tp")
    telemetry.policy_reload("failed")
    telemetry.record_drift(("sg", "credit", "3"), "score", "psi", 0.3)
    telemetry.breaker_transition(Transition("sg", "credit", "closed", "open", "tripped", {}, 0.0))
    telemetry.watch_total("queue.dropped", lambda: 7)
    telemetry.watch_fairness(
        lambda: {
            ("sg", "credit", "3"): {
                "groups": {"female": {"selection_rate": 0.4}},
                "disparities": {"demographic_parity_ratio": 0.8},
            }
        }
    )
    found = samples(telemetry)
    sg = {"region": "sg", "model": "credit"}
    assert found[key("guardproxy_feedback_total", **sg, group="female", cell="tp")] == 2
    assert found[key("guardproxy_policy_reloads_total", result="failed")] == 1
    assert found[key("guardproxy_drift", **sg, version="3", signal="score", test="psi")] == 0.3
    assert found[key("guardproxy_breaker_transitions_total", **sg, to="open")] == 1
    assert found[key("guardproxy_breaker_state", **sg)] == 2
    assert found[key("guardproxy_queue_dropped_total")] == 7
    rate = key("guardproxy_fairness_selection_rate", **sg, version="3", group="female")
    assert found[rate] == 0.4
    assert found[key("guardproxy_fairness_demographic_parity_ratio", **sg, version="3")] == 0.8
    telemetry.forget_drift(("sg", "credit", "3"))
    assert not [name for name in samples(telemetry) if name[0] == "guardproxy_drift"]


def test_a_scrape_reads_the_fairness_reports_and_the_fleet_once() -> None:
    # Eight fairness gauges each recomputed every model's report: ~1 ms a model a scrape.
    telemetry = Telemetry(TelemetryConfig(), "http://127.0.0.1:1")
    reads = {"fairness": 0, "fleet": 0}

    def fairness() -> dict[tuple[str, str, str], dict[str, Any]]:
        reads["fairness"] += 1
        return {
            ("sg", f"m{reads['fairness']}", ""): {
                "groups": {"female": {"selection_rate": 0.4, "true_positive_rate": 0.5}},
                "disparities": {"demographic_parity_ratio": 0.8},
            }
        }

    def fleet() -> list[SimpleNamespace]:
        reads["fleet"] += 1
        problem = SimpleNamespace(kind="drift", severity=40.0)
        return [SimpleNamespace(region="sg", model="m", score=40, problems=[problem])]

    telemetry.watch_fairness(fairness)
    telemetry.watch_fleet(fleet)
    found = samples(telemetry)
    assert reads == {"fairness": 1, "fleet": 1}
    sg = {"region": "sg", "model": "m1", "version": ""}
    assert found[key("guardproxy_fairness_selection_rate", **sg, group="female")] == 0.4
    assert found[key("guardproxy_fairness_true_positive_rate", **sg, group="female")] == 0.5
    assert found[key("guardproxy_fairness_demographic_parity_ratio", **sg)] == 0.8
    assert found[key("guardproxy_model_problem", region="sg", model="m", kind="drift")] == 40
    found = samples(telemetry)  # the next scrape reads afresh
    assert reads == {"fairness": 2, "fleet": 2}
    assert key("guardproxy_fairness_demographic_parity_ratio", **sg) not in found


def test_bad_names_are_refused() -> None:
    telemetry = Telemetry(TelemetryConfig(), "http://127.0.0.1:1")
    with pytest.raises(ValueError, match="tp, fp, tn or fn"):
        telemetry.count_feedback("sg", "credit", "female", "maybe")
    with pytest.raises(ValueError, match="unknown total"):
        telemetry.watch_total("requests", lambda: 1)
    with pytest.raises(ValueError, match="applied, unchanged or failed"):
        telemetry.policy_reload("ok")


def test_disabled_telemetry_adds_nothing() -> None:
    telemetry = Telemetry(TelemetryConfig(disabled=True), "http://127.0.0.1:1")

    async def handler(request: Request, writer: ResponseWriter) -> None:
        writer.send(204, [])

    assert telemetry.traced(handler) is handler
    assert telemetry.tracer is NO_TRACER
    assert b"disabled" in telemetry.metrics_text()
    assert telemetry.status()["enabled"] is False


def test_joined_labels_count_by_confusion_cell() -> None:
    telemetry = Telemetry(TelemetryConfig(), "http://127.0.0.1:1")
    joined = [(record(1), 1), (record(1), 0), (record(0), 0), (record(0), 1), (record(1), 1)]
    telemetry.count_joined(joined)
    found = samples(telemetry)
    labels = {"region": "sg", "model": "credit", "group": "female"}
    cells = {c: found[key("guardproxy_feedback_total", **labels, cell=c)]
             for c in ("tp", "fp", "tn", "fn")}  # fmt: skip
    assert cells == {"tp": 2, "fp": 1, "tn": 1, "fn": 1}


def record(decision: int) -> PredictionRecord:
    """A prediction for a female applicant in sg with this decision."""
    return PredictionRecord("r", 0.0, "sg", "credit", "", "female", 0.5, decision, 0.5, "p", "t")


def test_status_shows_no_query_of_an_endpoint() -> None:
    # Some collectors take their key in the query; /status masks only known values and
    # URL credentials.
    endpoint = "http://127.0.0.1:1/v1/traces?api_key=s3cret-key"
    telemetry = Telemetry(TelemetryConfig(disabled=True, traces_endpoint=endpoint), "http://u")
    status = telemetry.status()
    assert status["traces_endpoint"] == "http://127.0.0.1:1/v1/traces?***"
    assert "s3cret" not in str(status)
