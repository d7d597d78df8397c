"""What the attack tests share: a recording model behind a real proxy, applicants, policies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from guardproxy.testing import (
    RecordingModel,
    RunningProxy,
    proxy_settings,
    running_proxy,
    serving,
    write_policies,
)

INFER = "/v2/models/adult/infer"


def applicant(age: int = 40, sex: str = "Female", note: str = "") -> dict[str, Any]:
    """A one-row KServe v2 request; `note` rides along as a BYTES input."""
    inputs: list[dict[str, Any]] = [
        {"name": "age", "shape": [1], "datatype": "INT64", "data": [age]},
        {"name": "sex", "shape": [1], "datatype": "BYTES", "data": [sex]},
    ]
    if note:
        inputs.append({"name": "note", "shape": [1], "datatype": "BYTES", "data": [note]})
    return {"inputs": inputs}


@asynccontextmanager
async def guarded(
    tmp_path: Path,
    policies: Mapping[str, str] | None = None,
    model: RecordingModel | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[RunningProxy, RecordingModel]]:
    """A proxy (the embedded default policy unless given) in front of a recording model."""
    model = model or RecordingModel()
    async with serving(model.app()) as url:
        if policies is not None:
            settings["policies"] = write_policies(tmp_path / "policies", policies)
        settings.setdefault("samples_dir", tmp_path / "samples")
        async with running_proxy(proxy_settings(url, **settings)) as proxy:
            yield proxy, model


async def post(
    session: aiohttp.ClientSession,
    url: str | URL,
    body: Any,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any, Any]:
    """POST JSON (or raw bytes): status, headers and the parsed (or raw) answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = CIMultiDict({"Content-Type": "application/json"})
    sent.extend(headers or {})  # a header given twice stays twice
    async with session.post(url, data=data, headers=sent) as response:
        raw = await response.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw
        return response.status, response.headers.copy(), parsed


async def status(proxy: RunningProxy) -> dict[str, Any]:
    """The admin port's /status."""
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.admin_url + "/status") as response:
            doc: dict[str, Any] = await response.json()
            return doc
