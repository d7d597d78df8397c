"""Masker never leave: not in /status, logs, spans or the answers a client gets."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest

from guardproxy.testing import (
    RecordingModel,
    attributes_of,
    otlp_receiver,
    proxy_settings,
    running_proxy,
    serving,
    write_policies,
)
from tests.integration.attacks import INFER, applicant, post

FALLBACK = "http://svc:fallback-pw-123@127.0.0.1:9/"
SAMPLE_DIR_SECRET = "samples-secret-dir-789"
POLICY = """
region: default
models: [{name: adult}]
groups: {attribute: {input: sex}, values: [Female, Male]}
sampling: {sink: {jsonl: "${SAMPLE_DIR}"}}
breaker: {open: {action: fallback, upstream: "${FALLBACK_URL}"}}
"""
BROKEN = POLICY + "decision: {threshold: '${BAD_THRESHOLD}'}\n"
NEVER_SHOWN = (
    "upstream-pw-999",
    "fallback-pw-123",
    SAMPLE_DIR_SECRET,
    "threshold-secret-321",
    "admin-secret",
    "feedback-secret",
)


def assert_clean(text: str) -> None:
    for secret in NEVER_SHOWN:
        assert secret not in text, f"{secret} leaked"


async def test_status_and_logs_never_show_credentials_or_values_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FALLBACK_URL", FALLBACK)
    monkeypatch.setenv("SAMPLE_DIR", str(tmp_path / SAMPLE_DIR_SECRET))
    monkeypatch.setenv("BAD_THRESHOLD", "threshold-secret-321")
    policies = write_policies(tmp_path / "policies", {"default.yaml": POLICY})
    model = RecordingModel()
    caplog.set_level(logging.INFO, logger="guardproxy")
    async with serving(model.app()) as url:
        upstream = url.replace("http://", "http://user:upstream-pw-999@")
        async with running_proxy(proxy_settings(upstream, policies=policies)) as proxy:
            async with aiohttp.ClientSession() as session:
                assert (await post(session, proxy.url + INFER, applicant()))[0] == 200
                (policies / "default.yaml").write_text(BROKEN)
                headers = {"Authorization": "Bearer admin-secret"}
                async with session.post(proxy.admin_url + "/admin/reload", headers=headers) as r:
                    reload = await r.text()
                    assert r.status == 422 and "decision.threshold" in reload
                async with session.get(proxy.admin_url + "/status") as r:
                    report = await r.text()
    assert "***" in report and json.loads(report)["breakers"]["fallbacks"]
    assert model.headers[0]["Authorization"].startswith("Basic ")  # the credentials still work
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "serving on" in logged and "policy reload failed" in logged
    for text in (report, reload, logged):
        assert_clean(text)


async def test_an_unreachable_upstream_gets_a_generic_answer_and_a_masked_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="guardproxy.proxy")
    down = "http://user:upstream-pw-999@127.0.0.1:9"
    async with running_proxy(proxy_settings(down)) as proxy, aiohttp.ClientSession() as session:
        headers = {"X-Request-Id": "down-1"}
        code, _, answer = await post(session, proxy.url + INFER, applicant(), headers)
    assert code == 502 and answer == {"error": "upstream unreachable", "request_id": "down-1"}
    (line,) = [r.getMessage() for r in caplog.records if "failed for down-1" in r.getMessage()]
    assert "http://***@127.0.0.1:9" in line and "(refused)" in line
    assert_clean(line)


async def test_spans_name_the_upstream_without_its_credentials() -> None:
    model = RecordingModel()
    async with otlp_receiver() as receiver, serving(model.app()) as url:
        upstream = url.replace("http://", "http://user:upstream-pw-999@")
        settings = proxy_settings(upstream, otlp_endpoint=receiver.url)
        async with running_proxy(settings) as proxy, aiohttp.ClientSession() as session:
            await post(session, proxy.url + INFER, applicant())
            assert await asyncio.to_thread(proxy.runtime.telemetry.flush)
    spans = [attributes_of(span.attributes) for span in receiver.spans()]
    assert any("url.full" in span for span in spans)
    assert_clean(repr(spans))
