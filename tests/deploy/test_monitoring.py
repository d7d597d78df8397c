"""The Prometheus Operator objects: rules pass promtool, fire when they should, and the
PodMonitor finds the port the Component opens.

The Operator's CRDs are not in kubernetes-validate's schemas, so the PrometheusRule is
checked by promtool (syntax, then unit tests in rules_test.yml) and the PodMonitor by the
structural checks below.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .manifests import (
    COMPONENT,
    K8S,
    POLICIES,
    SIDECAR_LABEL,
    Doc,
    docs,
    kustomization,
    needs_kustomize,
    of_kind,
    one,
    pod_spec,
    render,
)

MONITORING = K8S / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package `prometheus`)"
)


def rule_object() -> Doc:
    """The PrometheusRule as written."""
    (rule,) = docs(MONITORING / "rules.yaml")
    return rule


def rules() -> dict[str, Doc]:
    """Every alerting rule by name."""
    groups = rule_object()["spec"]["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run promtool; its output is the failure message."""
    return subprocess.run(
        [str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def write_rules(directory: Path, annotations: bool = True) -> Path:
    """The rule groups as a plain Prometheus rule file."""
    groups: Any = rule_object()["spec"]["groups"]
    if not annotations:
        groups = [
            {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in groups
        ]
    path = directory / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    return path


def test_the_alerts_the_cluster_needs_are_there() -> None:
    assert {
        "GuardproxyBreakerOpen",
        "GuardproxyEqualOpportunityGap",
        "GuardproxyDisparateImpact",
        "GuardproxyDriftAlarm",
        "GuardproxyUnscoredAnswers",
        "GuardproxySamplesDropped",
        "GuardproxyUpstreamErrors",
    } <= set(rules())
    for name, rule in rules().items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


@needs_promtool
def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    done = promtool("check", "rules", str(write_rules(tmp_path)), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


@needs_promtool
def test_rules_fire_on_their_series_and_not_on_near_misses(tmp_path: Path) -> None:
    write_rules(tmp_path, annotations=False)
    shutil.copy(Path(__file__).with_name("rules_test.yml"), tmp_path / "rules_test.yml")
    done = promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (tmp_path / "rules_test.yml").read_text()))
    assert tested == set(rules()), "every alert has a unit test"


def bound(alert: str, comparison: str) -> float:
    """The number an alert's expression compares its first series against."""
    expr = rules()[alert]["expr"]
    found = re.search(rf"\)\s*{re.escape(comparison)}\s*([0-9.]+)", expr)
    assert found, f"{alert}: no `{comparison} N` in {expr!r}"
    return float(found.group(1))


def test_bounds_are_those_of_the_default_policy() -> None:
    (policy,) = docs(POLICIES / "default.yaml")
    assert bound("GuardproxyDriftAlarm", ">") == policy["drift"]["tests"]["psi"]["alarm"]
    fairness = policy["fairness"]
    assert bound("GuardproxyDisparateImpact", "<") == fairness["disparate_impact"]["min_ratio"]
    assert (
        bound("GuardproxyEqualOpportunityGap", ">")
        == fairness["equal_opportunity"]["max_difference"]
    )
    labels = policy["decision"]["adapt"]["min_labels_per_group"]
    assert f">= {labels}" in rules()["GuardproxyEqualOpportunityGap"]["expr"]


def test_the_pod_monitor_scrapes_the_admin_port_of_every_sidecar() -> None:
    (monitor,) = of_kind(docs(MONITORING / "podmonitor.yaml"), "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"namespaceSelector", "selector", "podMetricsEndpoints", "sampleLimit"}
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"] == {"matchLabels": dict([SIDECAR_LABEL])}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    (patch,) = docs(COMPONENT / "sidecar.yaml")
    template = patch["spec"]["template"]
    assert template["metadata"]["labels"] == dict([SIDECAR_LABEL])
    sidecar = one(pod_spec(patch)["initContainers"], name="guardproxy")
    admin = one(sidecar["ports"], name=endpoint["port"])
    assert one(sidecar["env"], name="GUARDPROXY_ADMIN")["value"].endswith(
        f":{admin['containerPort']}"
    )


def test_the_network_policy_admits_the_monitoring_namespace() -> None:
    (policy,) = docs(COMPONENT / "networkpolicy.yaml")
    admin = one(policy["spec"]["ingress"], ports=[{"port": "guard-admin", "protocol": "TCP"}])
    (source,) = admin["from"]
    selected = source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    assert selected == kustomization(MONITORING)["namespace"]


@needs_kustomize
def test_the_dashboard_ships_as_a_grafana_configmap() -> None:
    rendered = render(MONITORING)
    (configmap,) = of_kind(rendered, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    text = (K8S / "dashboards" / "guardproxy.json").read_text(encoding="utf-8")
    assert configmap["data"]["guardproxy.json"] == text
    assert {d["metadata"]["namespace"] for d in rendered} == {"monitoring"}
