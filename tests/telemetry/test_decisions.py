"""The group label a metric or span may carry under the policy's groups.telemetry."""

from __future__ import annotations

import pytest

from guardproxy.guards.exchange import Verdict
from guardproxy.guards.groups import telemetry_group
from guardproxy.policy.table import CACHED_PATH_CHARS
from guardproxy.policy.thresholds import Snapshot
from guardproxy.telemetry import Telemetry, TelemetryConfig
from guardproxy.telemetry.decisions import DecisionObserver, GroupLabels
from guardproxy.telemetry.instruments import Instruments
from tests.factories import compiled_table, observation

from .conftest import samples


def test_groups_are_labelled_as_the_policy_allows() -> None:
    labels = GroupLabels()
    assert labels("female", "label") == "female"
    hashed = labels("female", "hashed")
    assert hashed != "female" and len(hashed) == 8 and labels("female", "hashed") == hashed
    assert labels("female", "none") == "all"


@pytest.mark.parametrize(
    ("mode", "shown"),
    [("label", "female"), ("hashed", telemetry_group("female", "hashed")), ("none", "all")],
)
def test_the_policy_decides_which_group_the_counters_carry(mode: str, shown: str) -> None:
    table = compiled_table(groups={"values": ["female", "male"], "telemetry": mode})
    telemetry = Telemetry(TelemetryConfig(), "http://127.0.0.1:1", Snapshot(table))
    model = table.default.models[0]
    telemetry.observe(observation(model, verdicts=(Verdict("female", 0.9, 0.5, 1),)))
    telemetry.count_feedback("eu", "m", "female", "tp")
    counters = ("guardproxy_decisions_total", "guardproxy_feedback_total")
    groups = {dict(labels)["group"] for name, labels in samples(telemetry) if name in counters}
    assert groups == {shown}


def test_the_route_of_a_long_path_is_matched_not_kept() -> None:
    table = compiled_table(name="m")
    model = table.default.models[0]
    observer = DecisionObserver(Instruments(), GroupLabels())
    long = "/v2/models/m/versions/" + "9" * CACHED_PATH_CHARS + "/infer"
    short = "/v2/models/m/versions/9/infer"
    routes = [observer.route(observation(model)._replace(path=p)) for p in (long, short)]
    assert routes[0] == routes[1] != "" and [p for _, p in observer._by_path] == [short]
