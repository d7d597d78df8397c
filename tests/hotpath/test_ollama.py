"""The ollama client's chat and generate APIs through a running proxy, whole and streamed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ollama
import pytest
from aiohttp import web

from guardproxy.testing import RunningProxy, proxy_before
from tests.hotpath.llm import BROKEN, POLICIES, TOOL, WITHHELD

STAMP = {"model": "m", "created_at": "2026-01-01T00:00:00Z"}


def line(doc: dict[str, Any]) -> bytes:
    return json.dumps({**STAMP, **doc}).encode() + b"\n"


def said(pieces: list[str], chat: bool, key: str) -> dict[str, Any]:
    """One piece (or the whole answer) as Ollama says it: a message, or a generate response."""
    text = "".join(p for p in pieces if not p.startswith(TOOL))
    tools = [json.loads(p.removeprefix(TOOL)) for p in pieces if p.startswith(TOOL)]
    if not chat:
        return {key: text}
    message: dict[str, Any] = {"role": "assistant", "content": ""}
    message[key] = text
    if tools:
        message["tool_calls"] = [{"function": {"name": "search", "arguments": t}} for t in tools]
    return {"message": message}


async def answer(request: web.Request) -> web.StreamResponse:
    """Answers the pieces of the last message or the prompt ("a|b|<tool>{...}"), streamed
    unless the request says `stream: false`; a piece `<think>x` is thinking."""
    doc = await request.json()
    chat = request.path == "/api/chat"
    pieces = (doc["messages"][-1]["content"] if chat else doc["prompt"]).split("|")
    if not doc.get("stream", True):
        whole = said(pieces, chat, "content" if chat else "response")
        return web.json_response({**STAMP, **whole, "done": True, "done_reason": "stop"})
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for piece in pieces:
        if piece == BROKEN:
            await response.write(b"{not json\n")
            continue
        key = "thinking" if piece.startswith("<think>") else "content" if chat else "response"
        piece = piece.removeprefix("<think>")
        await response.write(line({**said([piece], chat, key), "done": False}))
    await response.write(line({**said([""], chat, "content" if chat else "response"),
                               "done": True, "done_reason": "stop"}))  # fmt: skip
    await response.write_eof()
    return response


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[RunningProxy]:
    app = web.Application()
    app.router.add_post("/api/chat", answer)
    app.router.add_post("/api/generate", answer)
    async with proxy_before(app, tmp_path, POLICIES, trust_region_header="X-Region") as running:
        yield running


def client(proxy: RunningProxy, region: str = "default") -> ollama.AsyncClient:
    return ollama.AsyncClient(host=proxy.url, headers={"X-Region": region})


async def chatted(api: ollama.AsyncClient, pieces: str, seen: list[str]) -> None:
    async for part in await api.chat("m", [{"role": "user", "content": pieces}], stream=True):
        seen.append(part.message.thinking or part.message.content or "")


async def generated(api: ollama.AsyncClient, pieces: str, seen: list[str]) -> None:
    async for part in await api.generate("m", pieces, stream=True):
        seen.append(part.response)


@pytest.mark.parametrize("ask", [chatted, generated])
async def test_a_streamed_answer_passes_line_by_line(proxy: RunningProxy, ask: Any) -> None:
    seen: list[str] = []
    await ask(client(proxy), "Gorillas| are| great apes", seen)
    assert seen == ["Gorillas", " are", " great apes", ""]
    assert proxy.runtime.proxy.counts.chat_streams == 1


@pytest.mark.parametrize(
    ("ask", "pieces", "before"),
    [
        (chatted, "Here is a GO|Ril|LA. It eats.", "Here is a GORil"),
        (generated, "Here is a GO|Ril|LA. It eats.", "Here is a GORil"),
        (chatted, "<think>a go|<think>rilla?|Fine.", "a go"),
        (chatted, 'Fine.|<tool>{"q": ["the gorilla", 1]}', "Fine."),
    ],
)
async def test_a_denied_term_in_a_streamed_answer_raises_in_the_client(
    proxy: RunningProxy, ask: Any, pieces: str, before: str
) -> None:
    seen: list[str] = []
    with pytest.raises(ollama.ResponseError, match=WITHHELD):
        await ask(client(proxy), pieces, seen)
    assert "".join(seen) == before  # the line that completed it never left
    assert proxy.runtime.proxy.counts.chat_streams_blocked == 1


async def test_a_tool_calls_strings_do_not_run_into_one_word(proxy: RunningProxy) -> None:
    seen: list[str] = []
    await chatted(client(proxy), 'Fine.|<tool>{"a": "go", "b": "rilla"}', seen)
    assert seen == ["Fine.", "", ""]


async def test_a_whole_answer_is_blocked_or_masked(proxy: RunningProxy) -> None:
    ask = [{"role": "user", "content": 'a gorilla|<tool>{"q": ["the gorilla", 1]}'}]
    with pytest.raises(ollama.ResponseError) as raised:
        await client(proxy).chat("m", ask)
    assert raised.value.status_code == 422 and WITHHELD in raised.value.error
    masked = await client(proxy, "suppress").chat("m", ask)
    assert masked.message.content == "a *******"
    assert masked.message.tool_calls is not None
    assert masked.message.tool_calls[0].function.arguments == {"q": ["the *******", 1]}
    generated = await client(proxy, "suppress").generate("m", "a Gorilla| eats", stream=False)
    assert generated.response == "a ******* eats"


async def test_a_line_that_cannot_be_read_ends_the_stream_with_an_error_the_client_raises(
    proxy: RunningProxy,
) -> None:
    seen: list[str] = []
    with pytest.raises(ollama.ResponseError, match="could not be checked"):
        await chatted(client(proxy, "strict"), f"fine|{BROKEN}|more", seen)
    assert seen == ["fine"]  # neither the line nor what followed it
    with pytest.raises(ValueError):  # fail_open: passed unread, and the client cannot read it
        await chatted(client(proxy), f"fine|{BROKEN}|more", seen)
    assert proxy.runtime.proxy.counts.chat_stream_errors == 2
