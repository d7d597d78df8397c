"""Alerts and dashboard panels read only series a running guardproxy exports, and
k8s/README.md's table of metric names is what it exports, with the labels it lists.

A real proxy in front of the demo model serves guarded requests, takes labels, computes
drift and has its breaker forced once; its live /metrics is the reference.
"""

from __future__ import annotations

import asyncio
import json
import re
from itertools import islice
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import build_model_app, v2_request
from guardproxy.testing import proxy_settings, running_proxy, serving

from .manifests import K8S, POLICIES, docs

# Names the rules or panels use before guardproxy exports them: a metric name, or a label
# name (`model`). Remove an entry when the proxy starts exporting it; this test then fails
# for any entry that is already exported, so the list never outlives the gap.
PENDING: list[str] = []
# Labels the scrape adds (PodMonitor / kubernetes_sd relabelling), not guardproxy.
TARGET_LABELS = {"namespace", "pod", "container", "job", "instance"}
INFER = "/v2/models/adult/infer"
ADMIN = {"Authorization": "Bearer admin-secret"}  # guardproxy.testing.proxy_settings' tokens
FEEDBACK = {"Authorization": "Bearer feedback-secret"}
Exported = dict[str, set[str]]


def small_windows(directory: Path) -> Path:
    """policies/default.yaml with drift windows short enough for a few requests."""
    (policy,) = docs(POLICIES / "default.yaml")
    policy["drift"].update(reference={"warmup": 10}, window=10)
    policy["breaker"]["min_calls"] = 1  # each request's four rows count in a window of ten
    directory.mkdir()
    (directory / "default.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    return directory


async def label(client: aiohttp.ClientSession, url: str, request_ids: list[str]) -> None:
    """Label every request (alternating 1 and 0, so each group has both)."""
    body = [{"request_id": rid, "label": i % 2} for i, rid in enumerate(request_ids)]
    async with client.post(url + "/guardproxy/v1/feedback", json=body, headers=FEEDBACK) as r:
        assert r.status == 200, await r.text()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Every series name of a live /metrics scrape, with the label names it carries."""
    policies = small_windows(tmp_path_factory.mktemp("metrics") / "policies")
    return asyncio.run(scrape(policies))


async def scrape(policies: Path) -> Exported:
    """Run the proxy, drive it, and parse its /metrics."""
    async with serving(build_model_app()) as model_url:
        settings = proxy_settings(model_url, policies=policies, samples_dir=policies.parent / "s")
        async with running_proxy(settings) as proxy, aiohttp.ClientSession() as client:
            ids = await send(client, proxy.url)
            await proxy.runtime.worker.flush()  # records exist before labels join them
            await label(client, proxy.url, ids)
            await proxy.runtime.engine.refresh()
            force = {"state": "forced_open", "reason": "metric names test"}
            async with client.post(
                f"{proxy.admin_url}/admin/breaker/default", json=force, headers=ADMIN
            ) as answer:
                assert answer.status == 200, await answer.text()
            async with client.get(f"{proxy.admin_url}/metrics") as answer:
                text = await answer.text()
    found: Exported = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


async def send(client: aiohttp.ClientSession, url: str) -> list[str]:
    """48 rows in requests of 4; the request ids."""
    ids = []
    rows = list(islice(adult_rows(), 48))
    for start in range(0, len(rows), 4):
        async with client.post(url + INFER, json=v2_request(rows[start : start + 4])) as answer:
            assert answer.status == 200, await answer.text()
            ids.append(answer.headers["X-Request-Id"])
    return ids


def alert_exprs() -> dict[str, str]:
    """Each alert's expression, by alert name."""
    (rule,) = docs(K8S / "monitoring" / "rules.yaml")
    return {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}


def panel_exprs() -> dict[str, str]:
    """Each dashboard query (panels and variables), by where it is."""
    dashboard: Any = json.loads((K8S / "dashboards" / "guardproxy.json").read_text("utf-8"))
    found = {
        f"{p['title']} #{i}": t["expr"]
        for p in dashboard["panels"]
        for i, t in enumerate(p.get("targets", []))
    }
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found[f"${variable['name']}"] = variable["definition"]
    return found


def without_strings(expr: str) -> str:
    """PromQL with its string literals emptied (label values, regexes, templates)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metrics_in(expr: str) -> set[str]:
    """The metric names an expression reads."""
    bare = re.sub(r"\{[^}]*\}", "", without_strings(expr))
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    return set(re.findall(r"\b((?:guardproxy|http|target)_[a-z_]+)\b", bare))


def labels_in(expr: str) -> set[str]:
    """The label names an expression selects, groups or matches on."""
    text = without_strings(expr)
    clauses = re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text)
    grouped = {n.strip() for c in clauses for n in c.split(",") if n.strip()}
    selectors = re.findall(r"\{([^}]*)\}", text)
    selected = {n for s in selectors for n in re.findall(r"(\w+)\s*!?=~?", s)}
    return grouped | selected


def check(exprs: dict[str, str], exported: Exported) -> list[str]:
    """What each expression reads that the proxy does not export and is not pending."""
    problems = []
    for where, expr in exprs.items():
        names = metrics_in(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        labels = set().union(*(exported.get(n, set()) for n in names)) | TARGET_LABELS | {"le"}
        for name in sorted(names - set(exported) - set(PENDING)):
            problems.append(f"{where}: metric {name} is not exported")
        for name in sorted(labels_in(expr) - labels - set(PENDING)):
            problems.append(f"{where}: label {name} is on none of {sorted(names)}")
    return problems


def test_every_alert_reads_exported_or_pending_series(exported: Exported) -> None:
    assert check(alert_exprs(), exported) == []


def test_every_panel_reads_exported_series(exported: Exported) -> None:
    assert check(panel_exprs(), exported) == []
    used = set().union(*(metrics_in(e) for e in panel_exprs().values()))
    assert not used & set(PENDING), "panels show only what is exported today"


def test_pending_names_are_not_exported_yet(exported: Exported) -> None:
    labels = set().union(*exported.values())
    landed = [p for p in PENDING if p in exported or p in labels]
    assert landed == [], f"exported now, remove from PENDING: {landed}"
    used = "\n".join(alert_exprs().values())
    assert all(re.search(rf"\b{p}\b", used) for p in PENDING), "a pending name nothing uses"


def test_the_live_scrape_covers_what_the_alerts_need(exported: Exported) -> None:
    for name in (
        "guardproxy_breaker_state",
        "guardproxy_breaker_transitions_total",
        "guardproxy_drift",
        "guardproxy_fairness_equal_opportunity_difference",
        "guardproxy_fairness_demographic_parity_ratio",
        "guardproxy_feedback_total",
        "guardproxy_decisions_total",
        "guardproxy_samples_dropped_total",
        "guardproxy_queue_dropped_total",
        "http_client_request_duration_seconds_count",
    ):
        assert name in exported, f"the scrape lacks {name}; drive the proxy further"


def test_the_name_checks_catch_a_typo(exported: Exported) -> None:
    assert check({"typo": "sum(rate(guardproxy_decision_total[5m]))"}, exported)
    assert check({"label": "sum by (groupe) (guardproxy_decisions_total)"}, exported)


# Rows of k8s/README.md's table that this scrape does not drive: the gRPC port is off here.
NOT_DRIVEN = {"rpc_server_call_duration_seconds"}
# Series every scrape has that the README names outside the table.
BESIDE_THE_TABLE = ("guardproxy_build_info", "target_info", "process_")


def readme_metric_rows() -> dict[str, set[str]]:
    """k8s/README.md's "Metric names" table: {Prometheus name: the label names it lists}."""
    text = (K8S / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Metric names") :]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        name = re.findall(r"`([a-z_]+)`", cells[1])[0]
        listed = re.sub(r"\([^)]*\)", "", cells[2])  # what a label holds is said in brackets
        same = "http_server_request_duration_seconds" if "as the server duration" in listed else ""
        rows[name] = rows.get(same, set()) | set(re.findall(r"`([a-z_]+)`", listed))
    return rows


def family_of(sample: str, names: set[str]) -> str | None:
    """The table name a sample belongs to (a histogram's _bucket, _sum, _count)."""
    for suffix in ("", "_bucket", "_sum", "_count"):
        if suffix and sample.endswith(suffix) and sample.removesuffix(suffix) in names:
            return sample.removesuffix(suffix)
        if not suffix and sample in names:
            return sample
    return None


def test_the_readme_metric_table_is_what_the_proxy_exports(exported: Exported) -> None:
    rows = readme_metric_rows()
    assert len(rows) > 15, "the table was read"
    seen: dict[str, set[str]] = {}
    for sample, labels in exported.items():
        family = family_of(sample, set(rows))
        if family is None:
            assert sample.startswith(BESIDE_THE_TABLE), f"{sample} is not in the table"
            continue
        own = {label for label in labels if not label.startswith("otel_scope_") and label != "le"}
        seen.setdefault(family, set()).update(own)
    assert set(rows) - set(seen) == NOT_DRIVEN, "a row names a metric the proxy does not export"
    for family, labels in seen.items():
        assert labels == rows[family], (family, sorted(labels), sorted(rows[family]))
