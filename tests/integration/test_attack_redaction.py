"""A client cannot freeze the proxy with text built to make redaction backtrack."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from guardproxy.testing import eventually
from tests.integration.attacks import INFER, applicant, guarded, post

SAMPLE_ALL = """
region: default
models: [{name: adult}]
groups: {attribute: {input: sex}, values: [Female, Male]}
sampling: {rate: 1.0, min_per_group: 0, redact: [email, phone], max_body_bytes: 262144}
"""
# Each about 100 KB, with digits up front so the detectors cannot skip the text: runs of
# word characters made the e-mail pattern quadratic (17 s of a frozen loop at 100 KB).
ADVERSARIAL = [
    "1234 " + "a" * 100_000,
    "1234 " + "a." * 50_000,
    "1234 x@" + "b" * 100_000,
    "+1" * 50_000,
    "1-" * 50_000,
]


async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
    """How late the loop runs a 5 ms sleep, over and over: the longest pause it had."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - started - 0.005)


async def test_redacting_100kb_adversarial_bodies_never_pauses_the_loop(tmp_path: Path) -> None:
    async with guarded(tmp_path, {"default.yaml": SAMPLE_ALL}) as (proxy, _):
        stop, lags = asyncio.Event(), []
        watch = asyncio.create_task(ticker(stop, lags))
        async with aiohttp.ClientSession() as session:
            for text in ADVERSARIAL:
                body = applicant(note=f"mail ana.lim@example.com {text}")
                code, _, _ = await post(session, proxy.url + INFER, body)
                assert code == 200
            writer = proxy.runtime.sample_writer
            await eventually(lambda: writer.written >= len(ADVERSARIAL), within=60)
            async with session.get(proxy.admin_url + "/healthz") as response:
                assert response.status == 200
        stop.set()
        await watch
        assert max(lags) < 0.1, f"the event loop paused for {max(lags) * 1000:.0f} ms"
        await writer.stop(flush=True)
    written = "".join(p.read_text() for p in (tmp_path / "samples").glob("*.jsonl"))
    assert written.count("[REDACTED:email]") >= len(ADVERSARIAL)
    assert "ana.lim" not in written
