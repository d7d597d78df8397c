"""The anthropic client's Messages API through a running proxy, whole and streamed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from aiohttp import web

from guardproxy.testing import RunningProxy, proxy_before
from tests.hotpath.llm import BROKEN, POLICIES, TOOL, WITHHELD


def event(kind: str, doc: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **doc}).encode() + b"\n\n"


def message(text: str, tool_input: dict[str, Any] | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if tool_input is not None:
        content.append({"type": "tool_use", "id": "toolu_1", "name": "search", "input": tool_input})
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": content, "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1}}  # fmt: skip


async def messages(request: web.Request) -> web.StreamResponse:
    """Answers the pieces of the last message ("a|b|<tool>{..."), streamed when asked."""
    doc = await request.json()
    pieces = doc["messages"][-1]["content"].split("|")
    text = "".join(p for p in pieces if not p.startswith(TOOL))
    tool = "".join(p.removeprefix(TOOL) for p in pieces if p.startswith(TOOL))
    whole = message(text, json.loads(tool) if tool else None)
    if not doc.get("stream"):
        return web.json_response(whole)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    if pieces[0] != BROKEN:  # else the first event cannot be read
        await response.write(event("message_start", {"message": {**whole, "content": []}}))
        block = {"type": "text", "text": ""}
        await response.write(event("content_block_start", {"index": 0, "content_block": block}))
    for piece in pieces:
        if piece == BROKEN:
            await response.write(b"event: content_block_delta\ndata: {not json\n\n")
        elif piece.startswith(TOOL):
            delta = {"type": "input_json_delta", "partial_json": piece.removeprefix(TOOL)}
            await response.write(event("content_block_delta", {"index": 1, "delta": delta}))
        else:
            delta = {"type": "text_delta", "text": piece}
            await response.write(event("content_block_delta", {"index": 0, "delta": delta}))
    await response.write(event("content_block_stop", {"index": 0}))
    await response.write(event("message_delta", {"delta": {"stop_reason": "end_turn"},
                                                 "usage": {"output_tokens": 1}}))  # fmt: skip
    await response.write(event("message_stop", {}))
    await response.write_eof()
    return response


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[RunningProxy]:
    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    async with proxy_before(app, tmp_path, POLICIES, trust_region_header="X-Region") as running:
        yield running


@pytest.fixture
async def client(proxy: RunningProxy) -> AsyncIterator[anthropic.AsyncAnthropic]:
    api = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="unused", max_retries=0)
    yield api
    await api.close()


async def streamed(client: anthropic.AsyncAnthropic, pieces: str, seen: list[str]) -> None:
    stream = await client.messages.create(
        model="m", max_tokens=100, messages=[{"role": "user", "content": pieces}], stream=True
    )
    async for part in stream:
        if part.type == "content_block_delta" and part.delta.type == "text_delta":
            seen.append(part.delta.text)


async def test_a_streamed_message_passes_event_by_event(client: anthropic.AsyncAnthropic) -> None:
    seen: list[str] = []
    await streamed(client, "Gorillas| are| great apes", seen)
    assert seen == ["Gorillas", " are", " great apes"]


@pytest.mark.parametrize(
    "pieces", ["Here is a GO|Ril|LA. It eats.", 'Fine.|<tool>{"q": "\\u0067or|<tool>illa"}']
)
async def test_a_denied_term_in_a_streamed_message_raises_in_the_client(
    client: anthropic.AsyncAnthropic, proxy: RunningProxy, pieces: str
) -> None:
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError, match=WITHHELD):
        await streamed(client, pieces, seen)
    assert "".join(seen) in ("Here is a GORil", "Fine.")  # the event that completed it never left
    assert proxy.runtime.proxy.counts.chat_streams_blocked == 1


async def test_a_message_is_blocked_or_masked_whole(client: anthropic.AsyncAnthropic) -> None:
    ask = [{"role": "user", "content": 'a gorilla|<tool>{"q": ["the gorilla", 1]}'}]
    with pytest.raises(anthropic.APIStatusError) as raised:
        await client.messages.create(model="m", max_tokens=100, messages=ask)
    assert raised.value.status_code == 422 and WITHHELD in str(raised.value.body)
    masked = await client.messages.create(
        model="m",
        max_tokens=100,
        messages=ask,
        extra_headers={"X-Region": "suppress"},
    )
    text, tool = masked.content
    assert text.type == "text" and text.text == "a *******"
    assert tool.type == "tool_use" and tool.input == {"q": ["the *******", 1]}


async def test_a_stream_that_cannot_be_read_ends_with_an_error_the_client_raises(
    client: anthropic.AsyncAnthropic,
) -> None:
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError, match="could not be checked"):
        stream = await client.messages.create(
            model="m", max_tokens=100, messages=[{"role": "user", "content": f"{BROKEN}|more"}],
            stream=True, extra_headers={"X-Region": "strict"},
        )  # fmt: skip
        async for part in stream:
            seen.append(part.type)
    assert seen == []  # neither the event nor what followed it


async def test_an_answer_of_more_texts_than_max_rows_is_refused_not_passed(
    tmp_path: Path,
) -> None:
    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    async with proxy_before(app, tmp_path, POLICIES, max_rows=50) as proxy:
        api = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="unused", max_retries=0)
        strings = json.dumps({"q": ["a gorilla"] * 51})  # each text folded and scanned
        ask = [{"role": "user", "content": f"fine|{TOOL}{strings}"}]
        with pytest.raises(anthropic.APIStatusError) as raised:
            await api.messages.create(model="m", max_tokens=100, messages=ask)
        await api.close()
        assert raised.value.status_code == 413 and "over the limit of 50" in str(raised.value.body)
        assert proxy.runtime.proxy.counts.refused[413] == 1
