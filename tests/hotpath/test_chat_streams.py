"""The official openai client streaming through a running proxy from an OpenAI-style upstream."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from guardproxy.testing import (
    RunningProxy,
    eventually,
    proxy_before,
)

CHAT = "/v1/chat/completions"
WITHHELD = "withheld by policy"
POLICIES = {
    "default.yaml": f"""
region: default
models:
  - {{name: chat, protocol: openai}}
  - {{name: events, protocol: kserve_v2, score: {{output: score}}}}
labels: {{deny: [gorilla, new york], action: block, block: {{message: "{WITHHELD}"}}}}
sampling: {{rate: 1.0}}
""",
    "flag.yaml": "region: flag\nextends: default\nlabels: {action: flag}\n",
    "suppress.yaml": "region: suppress\nextends: default\nlabels: {action: suppress}\n",
    "strict.yaml": "region: strict\nextends: default\nlabels: {on_error: fail_closed}\n",
    "plain.yaml": "region: plain\nextends: default\nlabels: {deny: []}\n",
    "scored.yaml": (
        "region: scored\nextends: default\nmodels: [{name: chat, score: {path: '$.score'}}]\n"
    ),
    "refused.yaml": ("region: refused\nextends: scored\ndecision: {on_error: fail_closed}\n"),
}
GATE = "<gate>"  # the upstream stops here until the test opens the gate
BROKEN = "<broken>"  # an event that is not JSON
RESET = "<reset>"  # the upstream drops the connection
TOOL = "<tool>"  # the rest of the piece is a piece of a tool call's arguments
BIG = "<big>"  # an event of 5,000 characters of content


def event(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def chunk(
    content: str | None, finish: str | None = None, role: bool = False, tool: str | None = None
) -> bytes:
    delta: dict[str, Any] = {"content": content}
    if tool is not None:
        delta["tool_calls"] = [{"index": 0, "function": {"arguments": tool}}]
    if role:
        delta["role"] = "assistant"
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return event({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                  "choices": [choice]})  # fmt: skip


class ChatModel:
    """Streams the last message's pieces ("a|b|c"), each its own event, `write` bytes at once."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()  # set while the upstream holds the rest at the gate
        self.sent: list[bytes] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CHAT, self.chat)
        app.router.add_post("/v2/models/events/infer", self.events)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        doc = await request.json()
        pieces = doc["messages"][-1]["content"].split("|")
        if not doc.get("stream"):
            text = "".join(p for p in pieces if not p.startswith(TOOL))
            message: dict[str, Any] = {"role": "assistant", "content": text}
            tools = [p.removeprefix(TOOL) for p in pieces if p.startswith(TOOL)]
            if tools:
                message["tool_calls"] = [
                    {"id": f"call{i}", "type": "function",
                     "function": {"name": "search", "arguments": a}}
                    for i, a in enumerate(tools)
                ]  # fmt: skip
            return web.json_response({"id": "c1", "object": "chat.completion", "created": 1,
                                      "model": "m", "choices": [{"index": 0, "message": message,
                                      "finish_reason": "stop"}]})  # fmt: skip
        if "gzip" in request.query:  # encoded though the proxy asked for identity
            body = chunk("".join(pieces)) + b"data: [DONE]\n\n"
            headers = {"Content-Type": "text/event-stream", "Content-Encoding": "gzip"}
            return web.Response(body=gzip.compress(body), headers=headers)
        step = int(request.query.get("write", "0"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await self._write(response, chunk("", role=True), step)
        for piece in pieces:
            if piece == GATE:
                self.waiting.set()
                await self.gate.wait()
                self.waiting.clear()
            elif piece == RESET:
                assert request.transport is not None
                request.transport.abort()
                return response
            elif piece == BROKEN:
                await self._write(response, b"data: {not json\n\n", step)
            elif piece == BIG:
                await self._write(response, chunk("y" * 5000), step)
            elif piece.startswith(TOOL):
                await self._write(response, chunk(None, tool=piece.removeprefix(TOOL)), step)
            else:
                await self._write(response, chunk(piece), step)
        await self._write(response, chunk(None, "stop") + b"data: [DONE]\n\n", step)
        await response.write_eof()
        return response

    async def _write(self, response: web.StreamResponse, data: bytes, step: int) -> None:
        self.sent.append(data)
        for pos in range(0, len(data), step or len(data)):
            await response.write(data[pos : pos + (step or len(data))])

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        await response.write_eof()
        return response


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[RunningProxy, ChatModel]]:
    model = ChatModel()
    async with proxy_before(model.app(), tmp_path, POLICIES, trust_region_header="X-Region") as p:
        yield p, model


@pytest.fixture
async def chat(served: tuple[RunningProxy, ChatModel]) -> AsyncIterator[openai.AsyncOpenAI]:
    proxy, _ = served
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


async def stream_text(
    chat: openai.AsyncOpenAI, pieces: str, region: str = "default", **extra: Any
) -> list[str]:
    """The content of every chunk the client reads (an error event raises APIError)."""
    texts: list[str] = []
    stream = await chat.chat.completions.create(
        model="m", messages=[{"role": "user", "content": pieces}], stream=True,
        extra_headers={"X-Region": region}, **extra,
    )  # fmt: skip
    async for part in stream:
        texts.extend(choice.delta.content for choice in part.choices if choice.delta.content)
    return texts


async def samples(proxy: RunningProxy, tmp_path: Path) -> list[dict[str, Any]]:
    await proxy.runtime.sample_writer.stop(flush=True)
    lines = "".join(p.read_text() for p in (tmp_path / "samples").glob("*.jsonl")).splitlines()
    return [json.loads(line) for line in lines]


async def test_the_first_token_arrives_while_the_upstream_holds_the_rest(
    served: tuple[RunningProxy, ChatModel], chat: openai.AsyncOpenAI
) -> None:
    proxy, model = served
    stream = await chat.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"Hello|{GATE}| world"}], stream=True
    )
    parts = stream.__aiter__()
    first = ""
    while not first:  # the role chunk comes first; a generous bound only keeps a bug from hanging
        part = await asyncio.wait_for(parts.__anext__(), timeout=30)
        first = part.choices[0].delta.content or ""
    assert first == "Hello" and model.waiting.is_set()  # the rest is still upstream
    model.gate.set()
    rest = [p.choices[0].delta.content or "" async for p in parts if p.choices]
    assert "".join(rest) == " world"
    assert proxy.runtime.proxy.counts.chat_streams == 1
    assert proxy.runtime.proxy.counts.unguarded_streams == 0


@pytest.mark.parametrize("write", [0, 1, 7])
async def test_a_denied_term_split_across_chunks_ends_the_stream_with_an_error_event(
    served: tuple[RunningProxy, ChatModel], chat: openai.AsyncOpenAI, write: int
) -> None:
    proxy, _ = served
    received: list[str] = []
    with pytest.raises(openai.APIError, match=WITHHELD) as raised:
        stream = await chat.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Here is a GO|Ril|LA. It eats."}],
            stream=True, extra_query={"write": write},
        )  # fmt: skip
        async for part in stream:
            received.extend(c.delta.content for c in part.choices if c.delta.content)
    error = {"message": WITHHELD, "type": "guardproxy", "code": "content_filter"}
    assert raised.value.body == error
    assert "".join(received) == "Here is a GORil"  # the event that completed the term never left
    counts = proxy.runtime.proxy.counts
    assert (counts.chat_streams_blocked, counts.blocked, counts.unguarded_streams) == (1, 1, 0)


async def test_a_term_that_ends_an_event_counts_only_when_no_letter_follows(
    served: tuple[RunningProxy, ChatModel], chat: openai.AsyncOpenAI
) -> None:
    proxy, _ = served
    assert await stream_text(chat, "Here is a GOrilla|s, the plural") == [
        "Here is a GOrilla", "s, the plural"
    ]  # fmt: skip
    with pytest.raises(openai.APIError, match=WITHHELD):
        await stream_text(chat, "Fine.|Here is a GOrilla| eating")
    counts = proxy.runtime.proxy.counts
    assert (counts.chat_streams, counts.chat_streams_blocked) == (2, 1)


async def test_a_term_held_before_an_unreadable_event_counts_when_fail_open(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    model = ChatModel()  # events over max_event cannot be read: the rest passes unread
    async with proxy_before(model.app(), tmp_path, POLICIES, max_body=4096) as proxy:
        body = {"model": "m", "stream": True,
                "messages": [{"role": "user", "content": f"fine, a gorilla|{BIG}"}]}  # fmt: skip
        async with client.post(proxy.url + CHAT, json=body) as response:
            received = await response.read()
        assert b"gorilla" not in received and WITHHELD.encode() in received
        counts = proxy.runtime.proxy.counts
        assert (counts.chat_stream_errors, counts.chat_streams_blocked) == (1, 1)


async def test_a_blocked_stream_is_sampled_whole_and_counted_as_blocked(
    served: tuple[RunningProxy, ChatModel],
    chat: openai.AsyncOpenAI,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    proxy, _ = served
    with pytest.raises(openai.APIError):
        await stream_text(chat, "Mail ann@example.com about|the new| York office")
    [record] = await samples(proxy, tmp_path)
    response = record["response"]
    assert response["choices"] == [
        {"index": 0, "text": "Mail [REDACTED:email] aboutthe new York office"}
    ]
    assert (response["ended"], response["error"]) == ("blocked", WITHHELD)
    assert record["flags"] == ["blocked:new york"]
    model = proxy.runtime.store.table.regions["default"].model("chat")
    assert model is not None and model.chain.errors == {}  # type: ignore[attr-defined]
    async with client.get(proxy.admin_url + "/metrics") as r:
        metrics = await r.text()
    assert any(
        'model="chat"' in line and 'outcome="blocked"' in line
        for line in metrics.splitlines()
        if line.startswith("guardproxy_decisions_total")
    )


async def test_a_denied_term_in_streamed_tool_call_arguments_ends_the_stream(
    served: tuple[RunningProxy, ChatModel], chat: openai.AsyncOpenAI, tmp_path: Path
) -> None:
    proxy, _ = served
    with pytest.raises(openai.APIError, match=WITHHELD):
        await stream_text(chat, f'Calling.|{TOOL}{{"q": "a gor|{TOOL}illa"}}')
    [record] = await samples(proxy, tmp_path)
    assert record["response"]["choices"] == [
        {"index": 0, "text": "Calling.", "tool_calls[0]": '{"q": "a gorilla"}'}
    ]
    assert record["flags"] == ["blocked:gorilla"]


async def test_a_clean_stream_passes_byte_for_byte_and_its_sample_holds_the_whole_answer(
    served: tuple[RunningProxy, ChatModel], client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    proxy, model = served
    message = {"role": "user", "content": "Gorillas| are| apes"}
    body = {"model": "m", "stream": True, "messages": [message]}
    async with client.post(proxy.url + CHAT, json=body) as response:
        received = await response.read()
        assert response.headers["X-Guard-Model"] == "chat"
        assert "Content-Length" not in response.headers
    assert received == b"".join(model.sent)
    [record] = await samples(proxy, tmp_path)
    assert record["response"]["choices"] == [{"index": 0, "text": "Gorillas are apes"}]
    assert (record["response"]["done"], record["response"]["ended"]) == (True, "complete")
    assert record["status"] == 200 and record["flags"] == []


async def test_flag_passes_the_stream_and_marks_it(
    served: tuple[RunningProxy, ChatModel], chat: openai.AsyncOpenAI, tmp_path: Path
) -> None:
    proxy, _ = served
    assert "".join(await stream_text(chat, "a gori|lla and a Gorilla", "flag")) == (
        "a gorilla and a Gorilla"
    )
    [record] = await samples(proxy, tmp_path)
    assert record["flags"] == ["label:gorilla"]
    assert proxy.runtime.proxy.counts.chat_streams_flagged == 1


async def test_suppress_ends_a_stream_as_block_does(
    served: tuple[RunningProxy, ChatModel], chat: openai.AsyncOpenAI, tmp_path: Path
) -> None:
    proxy, _ = served
    with pytest.raises(openai.APIError, match=WITHHELD):
        await stream_text(chat, "one| gorilla| two", "suppress")
    [record] = await samples(proxy, tmp_path)
    assert record["flags"] == ["blocked:gorilla"] and record["response"]["ended"] == "blocked"


async def test_without_terms_a_stream_is_still_sampled(
    served: tuple[RunningProxy, ChatModel], chat: openai.AsyncOpenAI, tmp_path: Path
) -> None:
    proxy, _ = served
    assert "".join(await stream_text(chat, "a gorilla| here", "plain")) == "a gorilla here"
    [record] = await samples(proxy, tmp_path)
    assert record["response"]["choices"][0]["text"] == "a gorilla here"


async def test_an_unreadable_event_passes_and_the_rest_is_read_when_fail_open(
    served: tuple[RunningProxy, ChatModel], client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    proxy, _ = served
    body = {"model": "m", "stream": True,
            "messages": [{"role": "user", "content": f"fine|{BROKEN}|a gorilla"}]}  # fmt: skip
    async with client.post(proxy.url + CHAT, json=body) as response:
        received = await response.read()
    assert b"{not json" in received and b"gorilla" not in received
    assert (
        json.loads(received.split(b"\n\n")[-3].removeprefix(b"data: "))["error"]["message"]
        == WITHHELD
    )
    assert proxy.runtime.proxy.counts.chat_stream_errors == 1
    [record] = await samples(proxy, tmp_path)
    response_record = record["response"]
    assert (response_record["ended"], response_record["unread_events"]) == ("blocked", 1)
    assert record["errors"] and record["flags"] == ["blocked:gorilla"]


async def test_an_unreadable_event_ends_the_stream_when_fail_closed(
    served: tuple[RunningProxy, ChatModel], client: aiohttp.ClientSession
) -> None:
    proxy, _ = served
    body = {"model": "m", "stream": True,
            "messages": [{"role": "user", "content": f"fine|{BROKEN}|more"}]}  # fmt: skip
    async with client.post(proxy.url + CHAT, json=body, headers={"X-Region": "strict"}) as r:
        received = await r.read()
    events = [e for e in received.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    error = json.loads(events[-2].removeprefix(b"data: "))["error"]
    assert (error["code"], error["type"]) == ("guard_error", "guardproxy")
    assert b"more" not in received and b"not json" not in received


@pytest.mark.parametrize("region", ["default", "strict"])
async def test_an_encoded_stream_cannot_be_read_and_follows_on_error(
    served: tuple[RunningProxy, ChatModel],
    client: aiohttp.ClientSession,
    region: str,
    tmp_path: Path,
) -> None:
    proxy, _ = served
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "a gorilla"}]}
    url = proxy.url + CHAT + "?gzip=1"
    async with client.post(url, json=body, headers={"X-Region": region}) as r:
        received = await r.read()
    if region == "default":  # fail_open: passed as it came, unread, counted
        assert r.status == 200 and b"gorilla" in gzip.decompress(received)
    else:
        assert r.status == 502 and "could not check" in json.loads(received)["error"]
    assert proxy.runtime.proxy.counts.chat_stream_errors == 1
    [record] = await samples(proxy, tmp_path)
    ended = {"default": "passed_unread", "strict": "unreadable"}[region]
    assert record["response"]["ended"] == ended and record["errors"]


async def test_a_decision_guard_marks_a_stream_unscored_or_refuses_it(
    served: tuple[RunningProxy, ChatModel], client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    proxy, _ = served
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with client.post(proxy.url + CHAT, json=body, headers={"X-Region": "scored"}) as r:
        assert (r.status, r.headers["X-Guard-Decision"]) == (200, "unscored")
        assert b"[DONE]" in await r.read()
    async with client.post(proxy.url + CHAT, json=body, headers={"X-Region": "refused"}) as r:
        assert r.status == 502
        assert "carries no score" in (await r.json())["error"]
    unscored, refused = await samples(proxy, tmp_path)
    assert unscored["response"]["ended"] == "complete" and unscored["status"] == 200
    assert refused["response"]["ended"] == "refused" and refused["status"] == 502
    assert "carries no score" in refused["response"]["error"]


async def test_other_models_streams_still_pass_unguarded_and_counted(
    served: tuple[RunningProxy, ChatModel], client: aiohttp.ClientSession
) -> None:
    proxy, _ = served
    async with client.post(proxy.url + "/v2/models/events/infer", json={"inputs": []}) as r:
        assert await r.read() == b"data: 1\n\n"
    counts = proxy.runtime.proxy.counts
    assert (counts.unguarded_streams, counts.chat_streams) == (1, 0)


async def test_a_non_streamed_chat_answer_is_still_guarded_as_json(
    served: tuple[RunningProxy, ChatModel], chat: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.UnprocessableEntityError):
        await chat.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "a gorilla"}]
        )


async def test_a_term_in_look_alike_letters_or_escaped_in_streamed_arguments_ends_the_stream(
    served: tuple[RunningProxy, ChatModel], chat: openai.AsyncOpenAI, tmp_path: Path
) -> None:
    proxy, _ = served
    with pytest.raises(openai.APIError, match=WITHHELD):  # a Cyrillic o
        await stream_text(chat, "Here is a g\u043e|rilla.")
    with pytest.raises(openai.APIError, match=WITHHELD):  # an escape cut between two events
        await stream_text(chat, f'Calling.|{TOOL}{{"q": "a \\u00|{TOOL}67orilla"}}')
    records = await samples(proxy, tmp_path)
    assert [r["flags"] for r in records] == [["blocked:gorilla"]] * 2
    assert records[1]["response"]["choices"][0]["tool_calls[0]"] == '{"q": "a \\u0067orilla"}'


async def test_suppress_masks_a_term_the_client_would_read_and_keeps_the_arguments_json(
    served: tuple[RunningProxy, ChatModel], chat: openai.AsyncOpenAI
) -> None:
    arguments = '{"q": "a \\u0067orilla", "n": 2}'
    answer = await chat.chat.completions.create(
        model="m", extra_headers={"X-Region": "suppress"},
        messages=[{"role": "user", "content": f"A g\u043erilla, called.|{TOOL}{arguments}"}],
    )  # fmt: skip
    message = answer.choices[0].message
    assert message.content == "A *******, called."
    assert message.tool_calls is not None
    written = message.tool_calls[0].function.arguments
    assert len(written) == len(arguments) and json.loads(written) == {"q": "a " + "*" * 12, "n": 2}


async def test_an_upstream_failing_mid_stream_resets_the_client_and_is_sampled(
    served: tuple[RunningProxy, ChatModel], chat: openai.AsyncOpenAI, tmp_path: Path
) -> None:
    proxy, _ = served
    with pytest.raises(openai.APIError):
        await stream_text(chat, f"half an answer|{RESET}")
    [record] = await samples(proxy, tmp_path)
    assert record["status"] == 502 and record["response"]["ended"] == "upstream_failed"
    assert record["response"]["choices"] == [{"index": 0, "text": "half an answer"}]
    assert proxy.runtime.proxy.counts.aborted == 1


async def test_a_client_leaving_mid_stream_releases_the_upstream_and_is_sampled(
    served: tuple[RunningProxy, ChatModel], tmp_path: Path
) -> None:
    proxy, model = served
    message = {"role": "user", "content": f"first|{GATE}|second"}
    body = json.dumps({"model": "m", "stream": True, "messages": [message]}).encode()
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (CHAT.encode(), len(body), body)
    )
    received = b""
    while b"first" not in received:
        received += await reader.read(65536)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # a reset: the client is gone while the upstream holds the rest
    await eventually(lambda: proxy.runtime.server.counters.open == 0)
    model.gate.set()
    await eventually(lambda: proxy.runtime.proxy.counts.client_gone == 1)
    [record] = await samples(proxy, tmp_path)
    assert record["response"]["ended"] == "client_gone"
    assert record["response"]["choices"][0]["text"].startswith("first")


async def test_more_choices_than_the_row_limit_are_refused_before_the_model_is_asked(
    served: tuple[RunningProxy, ChatModel], client: aiohttp.ClientSession
) -> None:
    proxy, model = served
    message = {"role": "user", "content": "a gorilla"}
    body = {"model": "m", "stream": True, "n": 10_001, "messages": [message]}
    async with client.post(proxy.url + CHAT, json=body) as response:
        assert response.status == 413
        assert "over the limit of 10000" in (await response.json())["error"]
    assert model.sent == []
