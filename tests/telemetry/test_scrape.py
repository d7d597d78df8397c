"""/metrics off the loop: shared renders, one at a time, and gauges read only on the loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from guardproxy.telemetry import Telemetry, TelemetryConfig
from guardproxy.telemetry.readings import read_sliced
from guardproxy.telemetry.scrape import Exposition, SharedRender

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def without_process(body: bytes) -> list[bytes]:
    """The exposition's lines but the process metrics (they move between two renders)."""
    return [line for line in body.splitlines() if b"process_" not in line]


async def test_a_scrape_renders_what_the_blocking_exposition_renders() -> None:
    telemetry = Telemetry(TelemetryConfig(), "http://127.0.0.1:1")
    telemetry.instruments.server.record_key(("GET", 200, "/v2/models/{name}/infer"), 0.02)
    telemetry.count_feedback("sg", "credit", "female", "tp")
    for accept in ("", OPENMETRICS):
        body, content_type = await telemetry.scrape(accept)
        blocking, expected_type = telemetry.exposition(accept)
        assert content_type == expected_type
        assert without_process(body) == without_process(blocking)
    await telemetry.shutdown()
    assert b"shut down" in (await telemetry.scrape())[0]


async def test_concurrent_scrapes_share_one_render_and_renders_never_overlap() -> None:
    running, most = 0, 0
    lock = threading.Lock()
    prepared: list[int] = []

    async def prepare() -> None:
        prepared.append(threading.get_ident())

    def render(accept: str) -> Exposition:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return accept.encode(), "text/plain"

    shared = SharedRender(prepare, render)
    same = await asyncio.gather(*(shared("") for _ in range(5)))
    assert shared.renders == 1 and len(set(same)) == 1
    both = await asyncio.gather(shared(""), shared(OPENMETRICS), shared(OPENMETRICS))
    assert shared.renders == 3  # one per format, one after the other
    assert most == 1
    assert both[1] == both[2] and both[0] != both[1]
    assert set(prepared) == {threading.get_ident()}  # on the loop


async def test_a_scraper_that_goes_away_leaves_the_render_to_the_others() -> None:
    def render(accept: str) -> Exposition:
        time.sleep(0.05)
        return b"body", "text/plain"

    async def prepare() -> None:
        return None

    shared = SharedRender(prepare, render)
    first = asyncio.create_task(shared(""))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(shared(""))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == (b"body", "text/plain")
    assert shared.renders == 1


async def test_the_gauges_sources_are_read_on_the_loop_never_in_the_render_thread() -> None:
    telemetry = Telemetry(TelemetryConfig(), "http://127.0.0.1:1")
    readers: set[int] = set()

    def fairness() -> Iterator[tuple[tuple[str, str, str], dict[str, Any]]]:
        readers.add(threading.get_ident())
        groups = {"female": {"selection_rate": 0.25}}
        yield ("sg", "credit", "1"), {"groups": groups, "disparities": {}}

    telemetry.watch_fairness(fairness)
    body, _ = await telemetry.scrape()
    assert readers == {threading.get_ident()}
    expected = (
        'guardproxy_fairness_selection_rate{group="female",model="credit",'
        'otel_scope_name="guardproxy"'
    )
    assert expected.encode() in body


async def test_reading_many_models_gives_the_loop_back_every_few_ms() -> None:
    ticks = 0

    def slow_rows() -> Iterator[int]:
        for i in range(20):
            time.sleep(0.001)  # stands for one model's row
            yield i

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    readings = await read_sliced(dict, slow_rows, budget=0.002)
    task.cancel()
    assert list(readings.fleet) == list(range(20))
    assert ticks - before >= 5


async def test_a_failing_source_leaves_its_gauges_empty(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Iterator[object]:
        yield object()
        raise RuntimeError("fleet view broke")

    readings = await read_sliced(lambda: {("sg", "m", "1"): {}}, broken)
    assert readings.fleet == () and list(readings.fairness) == [("sg", "m", "1")]
    assert "fleet gauges' source failed" in caplog.text
