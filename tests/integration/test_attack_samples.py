"""A client cannot fill the disk with samples, nor force every exchange into them."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from guardproxy.testing import RecordingModel, eventually
from tests.integration.attacks import INFER, applicant, guarded, post, status

BUDGET = 16 * 1024
POLICY = f"""
region: default
models: [{{name: adult}}]
groups: {{attribute: {{input: sex}}, values: [Female, Male]}}
sampling:
  rate: 1.0
  min_per_group: 0
  redact: []
  max_body_bytes: 1024
  sink: {{max_bytes: 4096, max_total_bytes: {BUDGET}, retention: 2d}}
"""


def on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("samples-*.jsonl"))


async def test_the_samples_directory_stays_within_its_byte_budget(tmp_path: Path) -> None:
    directory = tmp_path / "samples"
    async with guarded(tmp_path, {"default.yaml": POLICY}) as (proxy, _):
        writer = proxy.runtime.sample_writer
        async with aiohttp.ClientSession() as session:
            for i in range(150):  # every one sampled; some far over the per-body cap
                note = "z " * (5000 if i % 10 == 0 else 10)
                assert (await post(session, proxy.url + INFER, applicant(i, note=note)))[0] == 200
                if i % 25 == 0:
                    sent = i + 1
                    await eventually(lambda: writer.written >= sent)  # noqa: B023 - awaited here
                    assert on_disk(directory) <= BUDGET
            await eventually(lambda: writer.written == 150)
        report = (await status(proxy))["samples"]
        assert on_disk(directory) <= BUDGET
    assert report["sink"]["deleted_files"] > 0 and report["sink"]["bytes"] <= BUDGET
    assert report["sink"]["retention_seconds"] == 2 * 86400  # the policy's, in force
    assert report["truncated"] >= 15  # the oversized bodies were cut, and counted
    assert on_disk(directory) <= BUDGET


FAILING = """
region: default
models: [{name: adult}]
groups: {attribute: {input: sex}, values: [Female, Male]}
sampling: {rate: 0.0, min_per_group: 0, max_always: 5, redact: []}
"""


async def test_a_model_that_fails_on_purpose_cannot_fill_the_samples(tmp_path: Path) -> None:
    # A client that finds inputs the model fails on would otherwise have each one sampled.
    failing = RecordingModel(status=500)
    async with guarded(tmp_path, {"default.yaml": FAILING}, failing) as (proxy, _):
        writer = proxy.runtime.sample_writer
        async with aiohttp.ClientSession() as session:
            for i in range(20):
                assert (await post(session, proxy.url + INFER, applicant(i)))[0] == 500
        await eventually(lambda: writer.written == 5)
        report = (await status(proxy))["samples"]
    assert report["offered"] == 5 and report["always_capped"] == 15
