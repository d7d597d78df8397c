"""The openai client's Responses API and legacy completions through a running proxy."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from guardproxy.testing import RunningProxy, proxy_before
from tests.hotpath.llm import POLICIES, TOOL, WITHHELD


def sse(kind: str, doc: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **doc}).encode() + b"\n\n"


def response_object(text: str, arguments: str) -> dict[str, Any]:
    output: list[dict[str, Any]] = [{
        "type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }]  # fmt: skip
    if arguments:
        call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "search"}
        output.append({**call, "arguments": arguments, "status": "completed"})
    return {"id": "resp_1", "object": "response", "created_at": 1, "model": "m",
            "status": "completed", "output": output}  # fmt: skip


async def responses(request: web.Request) -> web.StreamResponse:
    """Answers the pieces of the input ("a|b|<tool>c"), streamed event by event when asked."""
    doc = await request.json()
    pieces = doc["input"].split("|")
    text = "".join(p for p in pieces if not p.startswith(TOOL))
    arguments = "".join(p.removeprefix(TOOL) for p in pieces if p.startswith(TOOL))
    whole = response_object(text, arguments)
    if not doc.get("stream"):
        return web.json_response(whole)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(sse("response.created", {"response": {**whole, "output": []}}))
    for piece in pieces:
        if piece.startswith(TOOL):
            delta = {"item_id": "fc_1", "output_index": 1, "delta": piece.removeprefix(TOOL)}
            event = sse("response.function_call_arguments.delta", delta)
        else:
            event = sse("response.output_text.delta", {"item_id": "msg_1", "output_index": 0,
                        "content_index": 0, "delta": piece, "logprobs": []})  # fmt: skip
        await response.write(event)
    await response.write(sse("response.output_item.done", {"output_index": 0,
                             "item": whole["output"][0]}))  # fmt: skip
    await response.write(sse("response.completed", {"response": whole}))
    await response.write_eof()
    return response


async def completions(request: web.Request) -> web.StreamResponse:
    """A legacy completions answer of the prompt's pieces, streamed when asked."""
    doc = await request.json()
    pieces = doc["prompt"].split("|")
    if not doc.get("stream"):
        choice = {"index": 0, "text": "".join(pieces), "finish_reason": "stop"}
        return web.json_response({"id": "c", "object": "text_completion", "created": 1,
                                  "model": "m", "choices": [choice]})  # fmt: skip
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for piece in pieces:
        chunk = {"id": "c", "object": "text_completion", "created": 1, "model": "m",
                 "choices": [{"index": 0, "text": piece, "finish_reason": None}]}  # fmt: skip
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[RunningProxy]:
    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/completions", completions)
    async with proxy_before(app, tmp_path, POLICIES, trust_region_header="X-Region") as running:
        yield running


@pytest.fixture
async def client(proxy: RunningProxy) -> AsyncIterator[openai.AsyncOpenAI]:
    api = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    yield api
    await api.close()


async def streamed_text(client: openai.AsyncOpenAI, pieces: str, seen: list[str]) -> None:
    stream = await client.responses.create(model="m", input=pieces, stream=True)
    async for event in stream:
        if event.type == "response.output_text.delta":
            seen.append(event.delta)


async def test_a_streamed_response_passes_event_by_event(client: openai.AsyncOpenAI) -> None:
    seen: list[str] = []
    await streamed_text(client, "Gorillas| are| great apes", seen)
    assert seen == ["Gorillas", " are", " great apes"]


@pytest.mark.parametrize(
    "pieces", ["Here is a GO|Ril|LA. It eats.", f'Fine.|{TOOL}{{"q": "\\u0067orilla"}}']
)
async def test_a_denied_term_in_a_streamed_response_ends_it_with_an_error(
    client: openai.AsyncOpenAI, proxy: RunningProxy, pieces: str
) -> None:
    seen: list[str] = []
    with pytest.raises(openai.APIError, match=WITHHELD):
        await streamed_text(client, pieces, seen)
    assert "".join(seen) in ("Here is a GORil", "Fine.")  # the event that completed it never left
    assert proxy.runtime.proxy.counts.chat_streams_blocked == 1


async def test_a_response_is_blocked_or_masked_whole(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        await client.responses.create(model="m", input="a gorilla")
    assert raised.value.status_code == 422 and WITHHELD in str(raised.value.body)
    masked = await client.responses.create(
        model="m",
        input=f'a gorilla|{TOOL}{{"q": "gorilla"}}',
        extra_headers={"X-Region": "suppress"},
    )
    assert masked.output_text == "a *******"
    call = masked.output[1]
    assert call.type == "function_call" and json.loads(call.arguments) == {"q": "*******"}


async def test_legacy_completions_are_guarded_by_default(client: openai.AsyncOpenAI) -> None:
    clean = await client.completions.create(model="m", prompt="Gorillas| are apes")
    assert clean.choices[0].text == "Gorillas are apes"
    with pytest.raises(openai.APIStatusError) as raised:
        await client.completions.create(model="m", prompt="a gorilla")
    assert raised.value.status_code == 422 and WITHHELD in str(raised.value.body)
    with pytest.raises(openai.APIError, match=WITHHELD):
        stream = await client.completions.create(model="m", prompt="a gori|lla", stream=True)
        async for _ in stream:
            pass
