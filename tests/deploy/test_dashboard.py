"""The Grafana dashboard is well formed and marks the bounds the policies use."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .manifests import K8S, POLICIES, docs

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def dashboard() -> Doc:
    """The Grafana dashboard."""
    loaded: Doc = json.loads((K8S / "dashboards" / "guardproxy.json").read_text("utf-8"))
    return loaded


def test_panels_are_well_formed(dashboard: Doc) -> None:
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["targets"] and panel["datasource"]["type"] == "prometheus", panel["title"]
        assert all(t["expr"].count("(") == t["expr"].count(")") for t in panel["targets"])


def test_the_parity_panel_marks_the_four_fifths_line(dashboard: Doc) -> None:
    (panel,) = [
        p
        for p in dashboard["panels"]
        if any("demographic_parity_ratio" in t["expr"] for t in p.get("targets", []))
    ]
    (policy,) = docs(POLICIES / "default.yaml")
    defaults = panel["fieldConfig"]["defaults"]
    bound = policy["fairness"]["disparate_impact"]["min_ratio"]
    assert bound in [step["value"] for step in defaults["thresholds"]["steps"]]
    assert defaults["custom"]["thresholdsStyle"]["mode"].startswith("line")


def test_the_namespace_selector_reads_a_scrape_label(dashboard: Doc) -> None:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "namespace"]
    assert variable["definition"].endswith(", namespace)")
