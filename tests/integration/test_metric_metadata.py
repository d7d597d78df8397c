"""What an operator reads beside the values: HELP, units in names, build and process metrics."""

from __future__ import annotations

import platform
import re
import time
from importlib import metadata
from itertools import islice
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from guardproxy import __version__
from guardproxy.demo.model import adult_rows
from guardproxy.telemetry.instruments import catalogue
from guardproxy.testing import RunningProxy, eventually
from tests.integration.traffic import needs_prometheus, post_labels, send_rows

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
# Prometheus naming: a base unit, spelled out and plural, as the name's suffix. Counts carry
# a {annotation} and ratios "1": neither adds a suffix.
UNIT_SUFFIXES = {"s": "_seconds", "By": "_bytes", "1": ""}
NOT_BASE_UNITS = re.compile(r"_(milliseconds|microseconds|ms|us|kilobytes|megabytes|percent)\b")
OWN_FAMILIES = ("target_info", "guardproxy_build_info", "process_")


def suffix(unit: str) -> str:
    """The name suffix a unit gives (a count's {annotation} gives none)."""
    if unit.startswith("{") and unit.endswith("}"):
        return ""
    return UNIT_SUFFIXES[unit]  # a unit outside the table fails here: spell it as a base unit


def prometheus_name(name: str, unit: str) -> str:
    """The family name the OTel Prometheus exporter gives an instrument."""
    return re.sub(r"[^a-zA-Z0-9]", "_", name) + suffix(unit)


async def scrape(client: aiohttp.ClientSession, proxy: RunningProxy, accept: str = "") -> Any:
    """The /metrics answer: (content type, text)."""
    headers = {"Accept": accept} if accept else {}
    async with client.get(f"{proxy.admin_url}/metrics", headers=headers) as response:
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


async def drive(client: aiohttp.ClientSession, proxy: RunningProxy) -> None:
    """Guarded and unguarded requests, and labels, so most families have a series."""
    decided = await send_rows(client, proxy.url, list(islice(adult_rows(), 8)), size=2)
    await proxy.runtime.worker.flush()
    await post_labels(client, proxy.url, decided)
    await proxy.runtime.engine.refresh()
    async with client.get(f"{proxy.url}/v2/health/ready") as response:
        assert response.status == 200


async def test_every_family_has_help_and_names_its_unit(model_proxy: RunningProxy) -> None:
    proxy = model_proxy
    async with aiohttp.ClientSession() as client:
        await drive(client, proxy)
        _, text = await scrape(client, proxy)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(families) >= 20
    for name, family in families.items():
        assert family.documentation.strip(), f"{name} has no HELP"
        assert not NOT_BASE_UNITS.search(name), f"{name}: use a base unit"
        if family.type == "counter":
            assert all(s.name == f"{name}_total" for s in family.samples), name
    declared = catalogue(proxy.runtime.telemetry.instruments)
    expected = {prometheus_name(m.name, m.unit): m for m in declared}
    ours = {n for n in families if not n.startswith(OWN_FAMILIES)}
    assert ours <= set(expected), f"not in the catalogue: {ours - set(expected)}"
    for name in ("http_server_request_duration_seconds", "guardproxy_overhead_seconds"):
        assert families[name].type == "histogram"
    for name in ours:
        assert families[name].documentation == expected[name].description
    assert all(m.description and m.unit for m in declared)


async def test_build_info_and_process_metrics_are_read_at_scrape_time(
    model_proxy: RunningProxy,
) -> None:
    proxy = model_proxy
    async with aiohttp.ClientSession() as client:
        _, first = await scrape(client, proxy)
        await drive(client, proxy)
        _, second = await scrape(client, proxy)
    (build,) = samples_named(second, "guardproxy_build_info")
    assert build.value == 1
    assert build.labels == {
        "version": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "opentelemetry_sdk": metadata.version("opentelemetry-sdk"),
    }
    (rss,) = samples_named(second, "process_resident_memory_bytes")
    (fds,) = samples_named(second, "process_open_fds")
    (start,) = samples_named(second, "process_start_time_seconds")
    assert rss.value > 10 * 2**20 and fds.value >= 3
    assert time.time() - 86400 < start.value < time.time()
    cpu = [samples_named(text, "process_cpu_seconds_total")[0].value for text in (first, second)]
    assert 0 < cpu[0] <= cpu[1]


def samples_named(text: str, name: str) -> list[Any]:
    """Every sample of an exposition with this name."""
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def test_openmetrics_scrapers_get_units_as_metadata(model_proxy: RunningProxy) -> None:
    proxy = model_proxy
    async with aiohttp.ClientSession() as client:
        await drive(client, proxy)
        content_type, text = await scrape(client, proxy, OPENMETRICS)
        plain_type, _ = await scrape(client, proxy)
    assert content_type.startswith("application/openmetrics-text")
    assert plain_type.startswith("text/plain")
    assert "# UNIT http_server_request_duration_seconds seconds" in text
    assert "# TYPE guardproxy_build info" in text
    assert text.endswith("# EOF\n")


@needs_prometheus
async def test_prometheus_reads_help_and_units(model_proxy: RunningProxy, prometheus: str) -> None:
    proxy = model_proxy
    async with aiohttp.ClientSession() as client:
        await drive(client, proxy)
        known: dict[str, Any] = {}

        async def scraped() -> bool:  # Prometheus starts, then scrapes every second
            known.update(await metadata_of(client, prometheus))
            # Metadata of one scrape may show up family by family: wait for both asked about.
            return {"http_server_request_duration_seconds", "guardproxy_build"} <= known.keys()

        await eventually(scraped, within=30, every=0.2)
    (duration,) = known["http_server_request_duration_seconds"]
    assert duration["unit"] == "seconds" and duration["type"] == "histogram"
    assert duration["help"] == "Duration of HTTP server requests on the data port."
    (build,) = known["guardproxy_build"]
    assert build["type"] == "info" and build["help"]
    empty = [name for name, entries in known.items() if not entries[0]["help"]]
    assert empty == []


async def metadata_of(client: aiohttp.ClientSession, prometheus: str) -> dict[str, Any]:
    """What Prometheus knows of each metric (nothing while it is still starting)."""
    try:
        async with client.get(f"{prometheus}/api/v1/metadata") as response:
            body = await response.json() if response.status == 200 else {}
    except aiohttp.ClientError:
        return {}
    data: dict[str, Any] = body.get("data", {})
    return data
