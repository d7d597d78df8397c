"""/metrics against the traffic, the labels and /status; a real Prometheus server scrapes it."""

from __future__ import annotations

from collections import Counter
from itertools import islice
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from guardproxy.demo.model import adult_rows
from guardproxy.testing import RunningProxy, eventually
from tests.integration.traffic import needs_prometheus, post_labels, query, send_batches, send_rows

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@needs_prometheus
async def test_prometheus_scrapes_the_decision_counters(
    model_proxy: RunningProxy, prometheus: str
) -> None:
    proxy = model_proxy
    rows = list(islice(adult_rows(), 10))
    async with aiohttp.ClientSession() as client:
        sent = await send_batches(client, proxy.url, rows, size=2)
        expected = {key: float(count) for key, count in sent.items()}
        decisions = 'guardproxy_decisions_total{job="guardproxy"}'

        async def scraped() -> bool:  # Prometheus starts, then scrapes every second
            return await query(client, prometheus, decisions) == expected

        await eventually(scraped, within=30, every=0.2)


def samples(text: str) -> Samples:
    """Every sample of a /metrics text by name and labels (the otel_scope_* labels dropped)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if not k.startswith("otel_"))
            out[(s.name, labels)] = s.value
    return out


def by_labels(found: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """The samples of one name, keyed by the values of the given labels."""
    out = {}
    for (sample, labels), value in found.items():
        if sample == name:
            named = dict(labels)
            out[tuple(named[k] for k in keys)] = value
    return out


async def test_metrics_match_the_traffic_the_labels_and_the_status(
    model_proxy: RunningProxy,
) -> None:
    proxy = model_proxy
    rows = list(islice(adult_rows(), 24))
    runtime = proxy.runtime
    async with aiohttp.ClientSession() as client:
        decided = await send_rows(client, proxy.url, rows, size=4)
        await runtime.worker.flush()  # the predictions are recorded before labels can join them
        cells = await post_labels(client, proxy.url, decided)
        await runtime.engine.refresh()
        runtime.store.reload(force=True)
        async with client.get(f"{proxy.admin_url}/metrics") as response:
            found = samples(await response.text())
    status: Any = runtime.status()
    decisions = Counter(("default", g, "positive" if d else "negative") for _, g, d in decided)
    assert by_labels(found, "guardproxy_decisions_total", "region", "group", "outcome") == decisions
    assert by_labels(found, "guardproxy_feedback_total", "region", "group", "cell") == cells
    durations = [v for (name, _), v in found.items() if name.endswith("duration_seconds_count")]
    assert durations == [6, 6]  # server and client: one per request
    assert_fairness_matches(found, status["fairness"]["models"]["default|adult|"]["fairness"])
    assert by_labels(found, "guardproxy_policy_reloads_total", "result") == {
        ("applied",): 1, ("failed",): 0
    }  # fmt: skip
    samples_status = status["samples"]
    assert found[("guardproxy_samples_written_total", frozenset())] == samples_status["written"]
    assert found[("guardproxy_samples_dropped_total", frozenset())] == samples_status["dropped"]
    assert found[("guardproxy_queue_dropped_total", frozenset())] == status["monitor"]["dropped"]


def assert_fairness_matches(found: Samples, report: dict[str, Any]) -> None:
    """Each fairness gauge equals the value /status reports, and none is missing."""
    rates = by_labels(found, "guardproxy_fairness_selection_rate", "region", "group")
    tprs = by_labels(found, "guardproxy_fairness_true_positive_rate", "region", "group")
    assert len(report["groups"]) == 2 and len(rates) == 2
    for group, metrics in report["groups"].items():
        assert rates[("default", group)] == pytest.approx(metrics["selection_rate"]["value"])
        if metrics["true_positive_rate"]["value"] is not None:
            assert tprs[("default", group)] == pytest.approx(metrics["true_positive_rate"]["value"])
    ratio = by_labels(found, "guardproxy_fairness_demographic_parity_ratio", "region")
    if report["demographic_parity_ratio"] is not None:
        assert ratio[("default",)] == pytest.approx(report["demographic_parity_ratio"])
    gap = by_labels(found, "guardproxy_fairness_demographic_parity_difference", "region")
    assert gap[("default",)] == pytest.approx(report["demographic_parity_difference"])
