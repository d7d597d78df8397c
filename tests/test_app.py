"""The composition root: the sample sink and its queue are the default policy's."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from guardproxy.sampling.sinks import Sample, SinkError
from guardproxy.testing import RunningProxy, eventually
from tests.integration.attacks import INFER, applicant, guarded, post, status
from tests.state.conftest import REDIS_URL


def policy(sink: str) -> dict[str, str]:
    """A default policy that samples every answer into the given sink."""
    text = f"""
region: default
models: [{{name: adult}}]
groups: {{attribute: {{input: sex}}, values: [Female, Male]}}
sampling: {{rate: 1.0, redact: [], sink: {sink}}}
"""
    return {"default.yaml": text}


def old_file(directory: Path, days: float) -> Path:
    """A samples file a run `days` ago left behind."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromtimestamp(time.time() - days * 86400, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"samples-{stamp}.jsonl"
    path.write_text('{"old": true}\n')
    return path


def files(directory: Path) -> list[Path]:
    """The sample files in a directory, oldest first."""
    return sorted(directory.glob("samples-*.jsonl"))


async def sampled(proxy: RunningProxy, n: int, start: int = 0) -> None:
    """Send n applicants and wait until their samples are written."""
    writer = proxy.runtime.sample_writer
    async with aiohttp.ClientSession() as session:
        for i in range(start, start + n):
            assert (await post(session, proxy.url + INFER, applicant(i)))[0] == 200
    await eventually(lambda: writer.written >= start + n)


async def test_samples_go_to_the_policys_directory_in_files_of_its_size(tmp_path: Path) -> None:
    directory = tmp_path / "reviewed"
    stale, recent = old_file(directory, days=3), old_file(directory, days=1)
    sink = f"{{jsonl: {directory}, max_bytes: 2048, retention: 2d}}"
    async with guarded(tmp_path, policy(sink)) as (proxy, _):
        await sampled(proxy, 12)
        report = (await status(proxy))["samples"]["sink"]
    assert not (tmp_path / "samples").exists()  # the --samples directory is not used
    assert not stale.exists() and recent.exists()  # older than the policy's two days: gone
    written = [p for p in files(directory) if p != recent]
    assert len(written) >= 3 and all(p.stat().st_size <= 2048 for p in written)
    lines = [json.loads(line) for p in written for line in p.read_text().splitlines()]
    assert len(lines) == 12 and report["retention_seconds"] == 2 * 86400


async def test_a_file_is_closed_once_it_is_as_old_as_max_age(tmp_path: Path) -> None:
    directory = tmp_path / "reviewed"
    async with guarded(tmp_path, policy(f"{{jsonl: {directory}, max_age: 100ms}}")) as (proxy, _):
        await sampled(proxy, 1)
        opened = time.monotonic()
        await eventually(lambda: time.monotonic() - opened > 0.1)  # the file's age is up
        await sampled(proxy, 1, start=1)
    assert len(files(directory)) == 2


async def test_the_sample_queue_holds_as_many_samples_as_the_policy_says(tmp_path: Path) -> None:
    async with guarded(tmp_path, policy("{queue: 2}")) as (proxy, _):
        runtime = proxy.runtime
        sample = Sample("r", 0.0, "default", "v", [], [], [], [], [], 200, b"{}", b"{}")
        offered = [runtime.samples.offer(sample) for _ in range(3)]  # the writer cannot run
        report = (await status(proxy))["samples"]
    assert offered == [True, True, False]
    assert (report["queue_size"], report["queue_full"]) == (2, 1)


async def test_the_sample_queue_holds_no_more_bytes_than_the_policy_says(tmp_path: Path) -> None:
    async with guarded(tmp_path, policy("{queue_bytes: 100000}")) as (proxy, _):
        runtime = proxy.runtime

        def sample(size: int) -> Sample:
            body = b"x" * max(size, 0)
            return Sample("r", 0.0, "default", "v", [], [], [], [], [], 200, body, b"", size=size)

        offered = [runtime.samples.offer(sample(n)) for n in (60_000, 60_000, 30_000)]
        unsized = runtime.samples.offer(sample(-1))  # a gRPC document: counted as 64 KiB
        held = runtime.samples.held  # before the writer can run
        report = (await status(proxy))["samples"]
        await eventually(lambda: runtime.samples.held == 0)  # written: the bytes are free again
    assert offered == [True, False, True] and not unsized and held == 90_000
    assert (report["queue_bytes"], report["queue_full"]) == (100_000, 2)


async def test_samples_go_to_the_redis_stream_the_policy_names(tmp_path: Path) -> None:
    prefix = f"gp-test-{os.urandom(4).hex()}:"
    stream = f"{prefix}samples"
    state = f"{REDIS_URL}?prefix={prefix}"  # the state's key prefix is not part of the stream
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with guarded(tmp_path, policy(f"{{redis_stream: '{stream}'}}"), state=state) as (
            proxy,
            _,
        ):
            await sampled(proxy, 2)
            report = (await status(proxy))["samples"]
        entries = await client.xrange(stream)
        assert report["sink"] == {"redis_stream": stream, "maxlen": 100_000}
        assert [json.loads(e[1][b"sample"])["request"]["inputs"][0]["data"] for e in entries] == [
            [0],
            [1],
        ]
        assert not (tmp_path / "samples").exists()
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_a_redis_stream_without_a_redis_state_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="redis_stream needs --state redis://"):
        async with guarded(tmp_path, policy("{redis_stream: samples}")):
            pass
