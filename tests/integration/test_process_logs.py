"""`guardproxy serve` as a real process writing JSON logs: every line parses, secrets never show."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import aiohttp

TOKEN = "admin-token-that-must-not-leak"


async def next_json(stream: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next log line as JSON (every line must be JSON), or None at the end."""
    line = await asyncio.wait_for(stream.readline(), 30)
    if not line:
        return None
    doc: dict[str, Any] = json.loads(line)
    return doc


async def test_json_logs_with_an_access_line_per_request(
    upstream_url: str, client: aiohttp.ClientSession
) -> None:
    with_credentials = upstream_url.replace("http://", "http://model-user:model-pass@")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardproxy.cli", "serve",
        "--upstream", with_credentials, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        "--log-level", "debug",  # lower case; without --access-log, requests log at debug
        env={**os.environ, "GUARDPROXY_LOG_FORMAT": "json", "GUARDPROXY_ADMIN_TOKEN": TOKEN},
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    lines = []
    try:
        while (doc := await next_json(process.stderr)) is not None:
            lines.append(doc)
            if doc["message"].startswith("serving on"):
                break
        serving = lines[-1]
        url = f"http://127.0.0.1:{serving['data_port']}"
        async with client.get(f"{url}/echo/a?password=hunter2", headers={"X-Request-Id": TOKEN}):
            pass
        async with client.get(f"http://127.0.0.1:{serving['admin_port']}/status") as response:
            status = await response.json()
        process.send_signal(signal.SIGTERM)
        while (doc := await next_json(process.stderr)) is not None:
            lines.append(doc)
        assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert serving["level"] == "INFO" and serving["logger"] == "guardproxy"
    assert {"time", "level", "logger", "message"} <= set(serving)
    (access,) = [line for line in lines if line["logger"] == "guardproxy.access"]
    assert access["level"] == "DEBUG" and access["path"] == "/echo/a"
    assert (access["method"], access["status"], access["outcome"]) == ("GET", 200, "unguarded")
    assert access["request_id"] == "***"  # a known secret is masked wherever it appears
    text = json.dumps(lines)
    for secret in (TOKEN, "model-pass", "hunter2"):
        assert secret not in text
    assert "http://***@127.0.0.1" in serving["message"]
    assert status["logs"] == {"access_log": False, "dropped": 0}
    assert lines[-1]["message"] == "stopped"
