"""Tests for baselines built from the Adult sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from guardproxy.monitors.bank import DriftBank
from guardproxy.monitors.baseline import baseline_command, build_baseline
from guardproxy.monitors.drift import Reference
from guardproxy.policy.baselines import load_baseline
from guardproxy.policy.models import DriftSpec

DATA = Path(__file__).parent.parent / "data" / "adult_drift_sample.csv"
SIGNALS = [("age", "numeric"), ("native-country", "categorical")]


def test_build_baseline_per_group_and_overall() -> None:
    doc = build_baseline(DATA, SIGNALS, group_column="sex", bins=8)  # type: ignore[arg-type]
    assert set(doc["groups"]) == {"*", "Female", "Male"}
    age = doc["groups"]["*"]["age"]
    assert sum(age["counts"]) == 5000
    assert len(age["counts"]) == len(age["edges"]) + 1 <= 9
    assert age["sample"] == sorted(age["sample"]) and len(age["sample"]) == 5000
    female = doc["groups"]["Female"]["age"]
    male = doc["groups"]["Male"]["age"]
    assert sum(female["counts"]) + sum(male["counts"]) == 5000
    country = doc["groups"]["*"]["native-country"]
    assert "United-States" in country["categories"]
    assert len(country["counts"]) == len(country["categories"]) + 1
    json.dumps(doc)  # JSON-able


def test_reference_from_baseline_round_trip() -> None:
    doc = build_baseline(DATA, SIGNALS, group_column="sex")  # type: ignore[arg-type]
    ref = Reference.from_baseline(doc, "age", "Female")
    assert ref.kind == "numeric"
    assert sum(ref.counts) == len(ref.sample)
    assert np.median(ref.sample) < np.median(Reference.from_baseline(doc, "age").sample)
    with pytest.raises(ValueError, match="no signal 'age' for group 'Other'"):
        Reference.from_baseline(doc, "age", "Other")


def test_baseline_command_writes_file_the_bank_can_use(tmp_path: Path) -> None:
    out = tmp_path / "baseline.json"
    summary = baseline_command(
        DATA, ["age", "sex"], categorical=["sex"], group=None, bins=10, out=out
    )
    assert summary == f"wrote {out}: 2 signal(s), groups *"
    doc = load_baseline(out)
    spec = DriftSpec.model_validate(
        {"window": 500, "signals": [{"input": "age"}, {"input": "sex", "kind": "categorical"}]}
    )
    bank = DriftBank(spec, baseline=doc)
    results = bank.observe([{"age": 70.0, "sex": "Female"}] * 500)
    assert {r.signal for r in results if r.drift_detected} == {"age", "sex"}


def test_baseline_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no column"):
        build_baseline(DATA, [("salary", "numeric")])
    with pytest.raises(ValueError, match="not in --columns"):
        baseline_command(DATA, ["age"], categorical=["sex"], out=tmp_path / "b.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a guardproxy baseline"):
        load_baseline(bad)
