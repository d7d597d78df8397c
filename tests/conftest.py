"""Shared fixtures: a real upstream and a real proxy, each on its own loopback socket."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from guardproxy.logs import stop_logging
from guardproxy.testing import RunningProxy, proxy_settings, running_proxy, serving, upstream_app


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    """A real aiohttp upstream with echo, stream, stall and reset endpoints."""
    async with serving(upstream_app()) as url:
        yield url


@pytest.fixture
async def proxy(upstream_url: str) -> AsyncIterator[RunningProxy]:
    """guardproxy on the embedded default policy in front of the test upstream."""
    async with running_proxy(proxy_settings(upstream_url)) as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that sends exactly what the test says (no automatic headers or decoding)."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """A test that runs the CLI configures logging for the process: undo it afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    stop_logging()
    root.handlers[:] = handlers
    root.setLevel(level)
