"""The proxy's access log: one record per finished request, with what the request became."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from itertools import islice
from typing import Any

import aiohttp
import pytest

from guardproxy.demo.model import adult_rows
from guardproxy.demo.server import build_model_app, v2_request
from guardproxy.logs.access import ACCESS_LOGGER
from guardproxy.testing import RunningProxy, eventually, proxy_settings, running_proxy, serving

INFER = "/v2/models/adult/infer"


@pytest.fixture
async def model_url() -> AsyncIterator[str]:
    """The demo KServe v2 model server."""
    async with serving(build_model_app()) as url:
        yield url


@pytest.fixture
async def logged(model_url: str) -> AsyncIterator[RunningProxy]:
    """A proxy with --access-log on, in front of the demo model."""
    settings = proxy_settings(model_url, access_log=True, max_body=4096)
    async with running_proxy(settings) as running:
        yield running


def entries(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The access records so far, as their fields."""
    names = ("method", "path", "status", "bytes", "request_id", "region", "model", "outcome")
    return [
        {"level": r.levelname, **{n: getattr(r, n) for n in names}}
        for r in caplog.records
        if r.name == ACCESS_LOGGER
    ]


async def last_entry(caplog: pytest.LogCaptureFixture, count: int) -> dict[str, Any]:
    """The newest record, once `count` have been written (the answer may arrive first)."""
    await eventually(lambda: len(entries(caplog)) >= count)
    return entries(caplog)[-1]


async def test_each_request_is_one_info_line_with_its_outcome(
    logged: RunningProxy, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, ACCESS_LOGGER)
    rows = list(islice(adult_rows(), 2))
    async with client.post(f"{logged.url}{INFER}?api_key=s3cret", json=v2_request(rows)) as r:
        body = await r.read()
        assert r.status == 200
        request_id = r.headers["X-Request-Id"]
    assert await last_entry(caplog, 1) == {
        "level": "INFO", "method": "POST", "path": INFER, "status": 200, "bytes": len(body),
        "request_id": request_id, "region": "default", "model": "adult", "outcome": "decided",
    }  # fmt: skip
    async with client.get(f"{logged.url}/v2/health/ready", headers={"X-Request-Id": "r-2"}) as r:
        body = await r.read()
    unguarded = await last_entry(caplog, 2)
    assert (unguarded["status"], unguarded["bytes"], unguarded["request_id"]) == (
        r.status, len(body), "r-2"
    )  # fmt: skip
    assert (unguarded["model"], unguarded["outcome"]) == ("", "unguarded")
    async with client.post(f"{logged.url}{INFER}", data=b"x" * 10_000) as r:
        assert r.status == 413
    refused = await last_entry(caplog, 3)
    assert (refused["status"], refused["outcome"], refused["model"]) == (413, "refused", "adult")
    assert all("s3cret" not in r.getMessage() for r in caplog.records)


async def test_an_unreachable_upstream_is_logged_as_an_error(
    client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, ACCESS_LOGGER)
    settings = proxy_settings("http://127.0.0.1:9", access_log=True)
    async with running_proxy(settings) as proxy:
        rows = list(islice(adult_rows(), 1))
        async with client.post(f"{proxy.url}{INFER}", json=v2_request(rows)) as r:
            assert r.status == 502
        guarded = await last_entry(caplog, 1)
        async with client.get(f"{proxy.url}/v2/health/ready") as r:
            assert r.status == 502
        unguarded = await last_entry(caplog, 2)
    assert (guarded["status"], guarded["outcome"]) == (502, "error")
    assert (unguarded["status"], unguarded["outcome"]) == (502, "unguarded")
    assert guarded["bytes"] > 0  # the JSON error body


async def test_without_the_flag_requests_are_logged_at_debug(
    model_url: str, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, ACCESS_LOGGER)
    async with running_proxy(proxy_settings(model_url)) as proxy:
        async with client.get(f"{proxy.url}/v2/health/ready") as r:
            assert r.status == 200
        caplog.set_level(logging.DEBUG, ACCESS_LOGGER)
        async with client.get(f"{proxy.url}/v2/health/ready") as r:
            assert r.status == 200
        entry = await last_entry(caplog, 1)
    assert len(entries(caplog)) == 1 and entry["level"] == "DEBUG"
