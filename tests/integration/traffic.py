"""Traffic and readings shared by the telemetry integration tests."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from guardproxy.demo.server import v2_request
from guardproxy.monitors.records import row_id
from guardproxy.testing import OtlpReceiver, attributes_of

INFER = "/v2/models/adult/infer"


OUTCOMES = ("negative", "positive")


HISTOGRAMS = ("http.server.request.duration", "http.client.request.duration", "guardproxy.overhead")


SERVER, CLIENT = 2, 3  # opentelemetry.proto Span.SpanKind values


def by_kind(spans: list[Any], kind: int) -> list[Any]:
    return [span for span in spans if span.kind == kind]


async def send_batches(
    client: aiohttp.ClientSession, url: str, rows: list[dict[str, str]], size: int
) -> Counter[tuple[str, str]]:
    """Send rows in batches; count (group, outcome) from the proxy's decision headers."""
    decided = await send_rows(client, url, rows, size)
    return Counter(
        (group, "positive" if decision else "negative") for _, group, decision in decided
    )


async def send_rows(
    client: aiohttp.ClientSession, url: str, rows: list[dict[str, str]], size: int
) -> list[tuple[str, str, int]]:
    """Send rows in batches; (row id, group, decision) per row, from the response headers."""
    decided = []
    for start in range(0, len(rows), size):
        batch = rows[start : start + size]
        async with client.post(url + INFER, json=v2_request(batch)) as response:
            assert response.status == 200, await response.text()
            decisions = response.headers["X-Guard-Decision"].split(",")
            request_id = response.headers["X-Request-Id"]
        for i, (row, decision) in enumerate(zip(batch, decisions, strict=True)):
            decided.append((row_id(request_id, i), row["sex"].strip(), int(decision)))
    return decided


def otlp_decisions(receiver: OtlpReceiver) -> Counter[tuple[str, str]]:
    (metric,) = receiver.metrics("guardproxy.decisions")
    counts: Counter[tuple[str, str]] = Counter()
    for point in metric.sum.data_points:
        attributes = attributes_of(point.attributes)
        assert attributes["region"] == "default"
        counts[(attributes["group"], attributes["outcome"])] += point.as_int
    return counts


def prometheus_decisions(text: str) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "guardproxy_decisions_total":
                assert sample.labels["region"] == "default"
                counts[(sample.labels["group"], sample.labels["outcome"])] += int(sample.value)
    return counts


def prometheus_counts(text: str, name: str) -> int:
    """The summed _count of the histogram the OTel instrument `name` becomes in Prometheus."""
    wanted = name.replace(".", "_") + "_seconds_count"
    return sum(
        int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == wanted
    )


PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


needs_prometheus = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(), reason="the prometheus server binary is not installed"
)


AUTH = {"Authorization": "Bearer feedback-secret"}  # guardproxy.testing.proxy_settings' token


CELLS = {(1, 1): "tp", (1, 0): "fp", (0, 0): "tn", (0, 1): "fn"}  # (decision, label)


async def query(client: aiohttp.ClientSession, url: str, expr: str) -> dict[tuple[str, str], float]:
    """An instant query: {(group, outcome): value}."""
    try:
        async with client.get(f"{url}/api/v1/query", params={"query": expr}) as response:
            body = await response.json()
    except aiohttp.ClientError:
        return {}
    return {
        (r["metric"]["group"], r["metric"]["outcome"]): float(r["value"][1])
        for r in body.get("data", {}).get("result", [])
    }


async def post_labels(
    client: aiohttp.ClientSession, url: str, decided: list[tuple[str, str, int]]
) -> Counter[tuple[str, str, str]]:
    """Label every decided row (alternating 1, 0, 0); the expected (region, group, cell) counts."""
    labels = [int(i % 3 == 0) for i in range(len(decided))]
    body = [{"request_id": rid, "label": y} for (rid, _, _), y in zip(decided, labels, strict=True)]
    async with client.post(f"{url}/guardproxy/v1/feedback", json=body, headers=AUTH) as response:
        assert (await response.json())["totals"]["joined"] == len(decided)
    return Counter(
        ("default", group, CELLS[(decision, y)])
        for (_, group, decision), y in zip(decided, labels, strict=True)
    )
