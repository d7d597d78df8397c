"""The group label a metric or span may carry under the policy's groups.telemetry."""

from __future__ import annotations

from guardproxy.telemetry.decisions import GroupLabels


def test_groups_are_labelled_as_the_policy_allows() -> None:
    labels = GroupLabels()
    assert labels("female", "label") == "female"
    hashed = labels("female", "hashed")
    assert hashed != "female" and len(hashed) == 8 and labels("female", "hashed") == hashed
    assert labels("female", "none") == "all"
