"""Offline calibration from a labeled CSV: JSON, the policy snippet, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from guardproxy.monitors.calibrate import fit_thresholds
from guardproxy.monitors.calibrate_csv import calibrate_command, policy_snippet
from tests.monitors.test_calibrate import EO_GROUPS, EO_SCORES, write


def test_policy_snippet_is_valid_yaml() -> None:
    result = fit_thresholds(
        [0.2, 0.8, 0.2, 0.4, 0.6, 0.8], [0, 1, 0, 1, 1, 1], list("aabbbb"), "demographic_parity"
    )
    text = policy_snippet(result)
    assert yaml.safe_load(text) == {"per_group": {"a": 0.8, "b": 0.4}}
    assert "# a: mix 0.2 / 0.8 with p_high=0.5000" in text


def test_calibrate_command_json_and_snippet(tmp_path: Path) -> None:
    rows = "\n".join(
        f"{s},{y},{g},1"
        for s, y, g in zip(
            EO_SCORES,
            ["no", "false", "1", "yes", "TRUE", "1", "0", "0", "yes"],
            EO_GROUPS,
            strict=True,
        )
    )
    data = write(tmp_path / "d.csv", "score,label,group,w\n" + rows + "\n")
    out = json.loads(
        calibrate_command(
            data, "score", "label", "group", "w", "equal_opportunity", "accuracy", None, 0.0, False
        )
    )
    assert out["groups"]["b"]["threshold"] == 0.3 and out["objective_value"] == pytest.approx(7 / 9)
    snippet = calibrate_command(
        data, "score", "label", "group", None, "per_group", "accuracy", None, 0.0, True
    )
    assert yaml.safe_load(snippet) == {"per_group": {"a": 0.6, "b": 0.9}}


def test_calibrate_command_bad_input(tmp_path: Path) -> None:
    good = write(tmp_path / "g.csv", "score,label,group\n0.5,1,a\n")
    with pytest.raises(ValueError, match="no column 'sex'"):
        calibrate_command(good, "score", "label", "sex")
    bad_score = write(tmp_path / "s.csv", "score,label,group\n0.5,1,a\nhigh,0,b\n")
    with pytest.raises(ValueError, match=r"s.csv:3: column 'score' holds 'high', not a number"):
        calibrate_command(bad_score, "score", "label", "group")
    bad_label = write(tmp_path / "l.csv", "score,label,group\n0.5,maybe,a\n")
    with pytest.raises(ValueError, match=r"l.csv:2: column 'label' holds 'maybe'"):
        calibrate_command(bad_label, "score", "label", "group")
    empty = write(tmp_path / "e.csv", "score,label,group\n")
    with pytest.raises(ValueError, match="no data rows"):
        calibrate_command(empty, "score", "label", "group")
