"""Streamed chat answers guarded chunk by chunk, read by the real openai client."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from guardproxy.payloads.chatstream import PASS, ChatStreamGuard, Scan, TermScanner, error_events
from guardproxy.payloads.sse import SSEError
from guardproxy.payloads.terms import fold, longest_span, term_pattern
from guardproxy.testing import serving

REFUSED = "the answer was refused by policy"


def chunk_event(pieces: dict[int, str], finish: str | None = None) -> bytes:
    choices = [
        {"index": i, "delta": {"content": text}, "finish_reason": finish}
        for i, text in pieces.items()
    ]
    doc = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return b"data: " + json.dumps({**doc, "choices": choices}).encode() + b"\n\n"


def stream_body(pieces: list[str], choices: int = 1) -> bytes:
    """An OpenAI chat stream: a role chunk, one chunk per piece (every choice), stop, [DONE]."""
    head = json.dumps(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [
                {"index": i, "delta": {"role": "assistant", "content": ""}} for i in range(choices)
            ],
        }
    )
    parts = [b"data: " + head.encode() + b"\n\n"]
    parts += [chunk_event({i: p for i in range(choices)}) for p in pieces]
    parts.append(chunk_event(dict.fromkeys(range(choices), ""), "stop"))
    return b"".join(parts) + b"data: [DONE]\n\n"


async def upstream_chat(request: web.Request) -> web.StreamResponse:
    """Streams the pieces named in the last message ("a|b|c"), written `write` bytes at a time."""
    doc = await request.json()
    pieces = doc["messages"][-1]["content"].split("|")
    body = stream_body(pieces, doc.get("n", 1))
    step = int(request.query.get("write", len(body)))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for pos in range(0, len(body), step):
        await response.write(body[pos : pos + step])
    await response.write_eof()
    return response


class GuardedPassThrough:
    """The streaming path as the proxy will run it: forward chunk by chunk, end on deny."""

    def __init__(self, upstream: str, scanner: TermScanner) -> None:
        self.upstream = upstream
        self.scanner = scanner
        self.guards: list[ChatStreamGuard] = []
        self.scans: list[Scan] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.forward)
        return app

    async def forward(self, request: web.Request) -> web.StreamResponse:
        url = self.upstream + request.path_qs
        guard = ChatStreamGuard(self.scanner)
        self.guards.append(guard)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url, data=await request.read(), headers={"Content-Type": "application/json"}
            ) as upstream,
        ):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                scan = guard.feed(chunk)
                self.scans.append(scan)
                if scan.action == "deny":
                    await response.write(error_events(REFUSED))
                    break
                await response.write(guard.release())
            else:
                await response.write(guard.rest())
            await response.write_eof()
            return response


@pytest.fixture
async def guarded() -> AsyncIterator[tuple[GuardedPassThrough, openai.AsyncOpenAI]]:
    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", upstream_chat)
    async with serving(upstream) as upstream_url:
        proxy = GuardedPassThrough(upstream_url, TermScanner(["gorilla"], flag=["ape"]))
        async with serving(proxy.app()) as url:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            yield proxy, client
            await client.close()


async def stream_text(client: openai.AsyncOpenAI, pieces: str, **extra: Any) -> dict[int, str]:
    texts: dict[int, str] = {}
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": pieces}], stream=True, **extra
    )
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    return texts


async def test_a_clean_stream_passes_unchanged(guarded: Any) -> None:
    proxy, client = guarded
    texts = await stream_text(client, "Gorillas| and apes|s are primates.")
    assert texts == {0: "Gorillas and apess are primates."}
    assert proxy.guards[0].answer() == texts[0]
    assert proxy.guards[0].done and proxy.guards[0].flags == set()


@pytest.mark.parametrize("write", [1, 3, 64, 100_000])
async def test_a_denied_term_split_across_chunks_ends_the_stream(guarded: Any, write: int) -> None:
    proxy, client = guarded
    extra = {"extra_query": {"write": write}}
    with pytest.raises(openai.APIError, match=REFUSED) as raised:
        await stream_text(client, "Here is a GO|Ril|LA. It eats.", **extra)
    assert raised.value.body == {"message": REFUSED, "type": "guardproxy", "code": "content_filter"}
    guard = proxy.guards[0]
    assert proxy.scans[-1] == Scan("deny", "gorilla", 0)
    assert guard.answer().startswith("Here is a GORilLA")  # the whole text for the sample


async def test_a_flagged_term_is_marked_and_forwarded(guarded: Any) -> None:
    proxy, client = guarded
    texts = await stream_text(client, "An A|pe, an ape!")
    assert texts == {0: "An Ape, an ape!"}
    assert proxy.guards[0].flags == {"ape"}
    assert Scan("flag", "ape", 0) in proxy.scans


async def test_each_choice_is_scanned_on_its_own(guarded: Any) -> None:
    proxy, client = guarded
    with pytest.raises(openai.APIError):
        await stream_text(client, "a gor|illa", n=2)
    assert proxy.guards[0].answers() == {0: "a gorilla", 1: "a gorilla"}


def feed_pieces(pieces: list[str]) -> tuple[ChatStreamGuard, list[Scan]]:
    guard = ChatStreamGuard(TermScanner(["gorilla", "new york"], flag=["ape"]))
    return guard, [guard.feed(chunk_event({0: p})) for p in pieces]


def test_every_split_of_a_term_is_found_in_the_chunk_that_shows_it_whole() -> None:
    text = "the gorilla went"
    for cut in range(1, len(text)):
        _, scans = feed_pieces([text[:cut], text[cut:]])
        deny_at = 0 if cut > len("the gorilla") else 1  # at 11, " went" shows it is a word
        assert scans[deny_at] == Scan("deny", "gorilla", 0), cut
        assert all(s.action == "pass" for s in scans[:deny_at])


def test_a_term_hidden_by_invisible_characters_is_found_in_every_split() -> None:
    text = "the go\u200bri\u00adl\u200d\u2060la went"  # reads as "the gorilla went"
    for cut in range(1, len(text)):
        _, scans = feed_pieces([text[:cut], text[cut:]])
        assert Scan("deny", "gorilla", 0) in scans, cut
    _, scans = feed_pieces(["go" + "\u200b" * 100, "\u200b" * 100 + "rilla", "!"])  # any number
    assert scans[-1] == Scan("deny", "gorilla", 0)


def test_byte_splits_inside_events_and_characters() -> None:
    body = chunk_event({0: "caf\u00e9 Gori"}) + chunk_event({0: "lla"})
    for cut in range(len(body)):
        guard = ChatStreamGuard(TermScanner(["gorilla"]))
        scans = [guard.feed(body[:cut]), guard.feed(body[cut:]), guard.end()]
        assert [s.action for s in scans].count("deny") == 1
        assert guard.answer() == "caf\u00e9 Gorilla"


def test_whole_words_only_and_terms_with_spaces() -> None:
    _, scans = feed_pieces(["gorillas ", "apex ", "new ", "york", "."])
    assert [s.action for s in scans] == ["pass", "pass", "pass", "pass", "deny"]
    _, scans = feed_pieces(["grape", "ape"])  # "grapeape": no word boundary
    assert [s.action for s in scans] == ["pass", "pass"]


def test_deny_wins_over_flag_in_the_same_chunk() -> None:
    _, scans = feed_pieces(["an ape and a gorilla."])
    assert scans == [Scan("deny", "gorilla", 0)]


def test_scanning_is_linear_in_the_text_whatever_the_chunking() -> None:
    for size in (1, 5, 1000):
        costs = []
        for n in (10_000, 40_000):
            text = ("word " * n)[:n]
            guard, _ = feed_pieces([text[i : i + size] for i in range(0, n, size)])
            costs.append(guard.scanner.scanned)
            assert guard.scanner.scanned <= n + (n // size + 1) * longest_span(["new york"])
        assert costs[1] <= 4 * costs[0] + 100 * longest_span(["new york"])


def test_only_complete_events_are_released() -> None:
    body = stream_body(["one ", "two"])
    guard = ChatStreamGuard(TermScanner(["x"]))
    out = []
    for i in range(0, len(body), 7):
        guard.feed(body[i : i + 7])
        released = guard.release()
        assert released == b"" or released.endswith(b"\n\n")
        out.append(released)
    guard.feed(b"data: partial")
    assert guard.release() == b""
    assert b"".join(out) + guard.rest() == body + b"data: partial"


def test_a_term_that_ends_an_event_waits_for_what_follows_it() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"], flag=["ape"]))
    first, second = chunk_event({0: "an ape"}), chunk_event({0: "x and a gorilla"})
    assert guard.feed(first) == PASS and guard.release() == first  # a flag holds nothing
    assert guard.feed(second) == PASS and guard.release() == b""  # held: "gorilla" may go on
    assert guard.feed(chunk_event({0: "s"})) == PASS  # "gorillas": not the term
    assert guard.release() == second + chunk_event({0: "s"})
    assert guard.end() == PASS and not guard.flags  # nor was "apex" the flagged term


@pytest.mark.parametrize(
    "ending",
    [
        chunk_event({0: " x"}),  # what follows is not a letter
        chunk_event({0: ""}, finish="stop"),  # the choice is finished
        b"data: [DONE]\n\n",
        b"",  # the upstream ends
    ],
)
def test_a_held_term_counts_once_nothing_can_go_on_with_it(ending: bytes) -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]))
    clean, denied = chunk_event({0: "fine, "}), chunk_event({0: "gorilla"})
    assert guard.feed(clean + denied) == PASS and guard.release() == clean
    scan = guard.feed(ending) if ending else guard.end()
    assert scan == Scan("deny", "gorilla", 0)
    assert guard.release() == b""  # the event that ended in the term never goes out


def test_a_term_in_the_event_that_finishes_its_choice_counts_there() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]))
    assert guard.feed(chunk_event({0: "a gorilla"}, finish="length")) == Scan("deny", "gorilla", 0)
    assert guard.release() == b""


def test_a_held_term_holds_every_later_event_up_to_max_event() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]), max_event=1_000)
    assert guard.feed(chunk_event({0: "a gorilla"})) == PASS
    other = chunk_event({1: "y" * 100})  # another choice's events wait behind it: 259 bytes
    scans = [guard.feed(other) for _ in range(3)]
    assert all(s == PASS for s in scans) and guard.release() == b""
    assert guard.feed(other) == Scan("deny", "gorilla", 0)  # no longer: it counts
    assert guard.release() == b""


def test_the_earliest_held_term_of_several_choices_bounds_what_goes_out() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"], flag=["ape"]))
    events = [chunk_event({1: "an ape"}), chunk_event({0: "a gorilla"}), chunk_event({1: "?"})]
    for event in events:
        guard.feed(event)
    assert guard.release() == events[0] and guard.flags == {"ape"}  # choice 0's term holds
    assert guard.feed(chunk_event({0: "", 1: "!"}, finish="stop")) == Scan("deny", "gorilla", 0)
    assert guard.release() == b""


def test_a_stream_finds_what_scanning_its_whole_text_finds() -> None:
    """Random streams (look-alikes, hidden characters, any chunking) against the whole text."""
    rng = random.Random(7)
    words = ["gorilla", "g\u043erilla", "ape", "apex", "grape", "go", "rilla", "new", "york",
             "x", "s", " ", " ", ".", ", ", "\u200b", "GORILLA", "_"]  # fmt: skip
    deny, flag = ["gorilla", "new york"], ["ape"]
    whole = term_pattern([*deny, *flag])
    for _ in range(500):
        text = "".join(rng.choice(words) for _ in range(rng.randint(1, 10)))
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 4))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        body = stream_body(pieces)
        guard = ChatStreamGuard(TermScanner(deny, flag=flag))
        step = rng.randint(1, len(body))
        scans = [guard.feed(body[i : i + step]) for i in range(0, len(body), step)]
        scans.append(guard.end())
        found = {m.casefold() for m in whole.findall(fold(text))}
        denied = "deny" in [s.action for s in scans]
        assert denied == bool(found & {"gorilla", "new york"}), (text, pieces)
        if not denied:
            assert guard.flags == found, (text, pieces)


def test_huge_events_and_bad_json_are_errors() -> None:
    guard = ChatStreamGuard(TermScanner(["x"]), max_event=10_000)
    with pytest.raises(SSEError, match="larger than"):
        guard.feed(b"data: " + b"a" * 20_000)
    with pytest.raises(SSEError, match="not JSON"):
        ChatStreamGuard(TermScanner(["x"])).feed(b"data: {nope\n\n")
    with pytest.raises(SSEError, match="choice index"):
        ChatStreamGuard(TermScanner(["x"]), max_choices=16).feed(chunk_event({16: "x"}))
    assert ChatStreamGuard(TermScanner(["x"])).feed(chunk_event({9_999: "x!"})).action == "deny"


def event_of(data: str) -> bytes:
    return b"data: " + data.encode() + b"\n\n"


@pytest.mark.parametrize(
    "data",
    [
        '{"choices": [{"index": 0, "delta": {"content": "gorilla"}, "logprobs": -Infinity}]}',
        '{"choices": [{"index": 0, "delta": {"content": "gorilla \\udc00"}}]}',
        '{"choices": [{"index": 0.0, "delta": {"content": "gorilla"}}]}',
        '{"choices": [{"index": "0", "delta": {"reasoning_content": "gorilla"}}]}',
        '{"choices": [{"index": 0, "text": "a gorilla"}]}',  # a completions stream
        '{"choices": [{"delta": {"content": "x "}}]}\n'  # two data lines, each JSON
        'data: {"choices": [{"delta": {"content": "gorilla"}}]}',
    ],
)
def test_what_a_client_reads_in_an_event_orjson_refuses_is_still_scanned(data: str) -> None:
    for skip in (False, True):
        guard = ChatStreamGuard(TermScanner(["gorilla"]), skip_unreadable=skip)
        assert "deny" in (guard.feed(event_of(data)).action, guard.end().action)


def test_fail_open_passes_an_unreadable_event_and_reads_on() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]), skip_unreadable=True, max_choices=16)
    body = (
        event_of("{nope")
        + event_of("[DONE] ")
        + chunk_event({16: "x"})
        + chunk_event({0: "gorilla!"})
    )
    assert guard.feed(body) == Scan("deny", "gorilla", 0)
    assert guard.unread_events == 2 and guard.done
    assert guard.unread == ["a chat stream event is not JSON", "choice index 16 outside 0..15"]


def test_an_event_left_without_its_blank_line_is_scanned_at_the_end() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]))
    assert (
        guard.feed(
            chunk_event({0: "fine "}) + b'data: {"choices": [{"delta": {"content": "gorilla"}}]}\n'
        ).action
        == "pass"
    )
    assert guard.release() == chunk_event({0: "fine "})
    assert guard.end() == Scan("deny", "gorilla", 0) and guard.release() == b""
    clean = ChatStreamGuard(TermScanner(["gorilla"]))
    clean.feed(b'data: {"choices": [{"delta": {"content": "ok"}}]}')
    assert clean.end().action == "pass" and clean.rest().endswith(b'ok"}}]}')


def test_the_kept_answer_is_bounded() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]), max_answer=10)
    scans = [guard.feed(chunk_event({0: "aaaaaaaa"})), guard.feed(chunk_event({0: "a gorilla."}))]
    assert scans[1].action == "deny"  # scanning goes on past the kept text
    assert guard.answer() == "aaaaaaaaa " and guard.truncated


def test_a_scanner_needs_terms() -> None:
    with pytest.raises(ValueError, match="at least one"):
        TermScanner([], flag=[""])


def test_a_deny_releases_the_events_before_the_one_that_completed_the_term() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]))
    clean, denied = chunk_event({0: "a gor"}), chunk_event({0: "illa"})
    assert guard.feed(clean + denied + chunk_event({0: " x"})) == Scan("deny", "gorilla", 0)
    assert guard.release() == clean
    assert guard.answer() == "a gorilla x"  # the sample still holds the events scanned


def test_the_events_before_an_oversized_one_in_its_chunk_are_scanned() -> None:
    for skip in (False, True):
        clean, large = chunk_event({0: "fine, "}), b"data: " + b"y" * 2_000
        guard = ChatStreamGuard(TermScanner(["gorilla"]), max_event=1_000, skip_unreadable=skip)
        assert guard.feed(clean + chunk_event({0: "a gorilla!"}) + large) == Scan(
            "deny", "gorilla", 0
        )
        assert guard.release() == clean
        held = ChatStreamGuard(TermScanner(["gorilla"]), max_event=1_000, skip_unreadable=skip)
        with pytest.raises(SSEError, match="larger than"):
            held.feed(clean + chunk_event({0: "a gorilla"}) + large)
        assert held.release() == clean  # the term may go on: settled by the caller
        assert held.settle() == Scan("deny", "gorilla", 0) and held.release() == b""


def test_an_unreadable_event_releases_the_events_before_it() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]))
    clean = chunk_event({0: "fine "})
    with pytest.raises(SSEError, match="not JSON"):
        guard.feed(clean + b"data: {oops\n\n" + chunk_event({0: "more"}))
    assert guard.release() == clean


def test_without_a_scanner_the_text_is_kept_and_events_released() -> None:
    guard = ChatStreamGuard(None)
    body = chunk_event({0: "a gorilla"}) + b"data: [DONE]\n\n"
    assert guard.feed(body[:10]) == Scan("pass") and guard.release() == b""
    assert guard.feed(body[10:]) == Scan("pass") and guard.release() == body
    assert guard.answer() == "a gorilla" and guard.done


def test_a_repeated_flagged_term_is_kept_once() -> None:
    # A model can be asked to say a word a million times: one record per match held
    # ~46 bytes a character of the answer, and ~0.7 s of the loop a MiB.
    scanner = TermScanner(["gorilla"], flag=["ape"])
    _, found, _ = scanner.scan("", "ape " * 10_000 + "Ape!")
    assert found == [Scan("flag", "ape")]
    guard = ChatStreamGuard(scanner)
    for _ in range(100):
        guard.feed(chunk_event({0: "ape " * 100}))
    assert guard.flags == {"ape"}
    _, found, _ = scanner.scan("", "ape ape gorilla ape")
    assert found == [Scan("flag", "ape"), Scan("deny", "gorilla")]


def test_a_text_streamed_a_character_at_a_time_is_kept_in_runs() -> None:
    # One object a token held ~60 bytes a character of the kept answer: 1.2 MB here.
    text = "abcdefghij" * 2_000
    events = [chunk_event({0: character}) for character in text]
    tracemalloc.start()
    try:
        guard = ChatStreamGuard(None, max_answer=1 << 20)
        for event in events:
            guard.feed(event)
            guard.release()  # forwarded, as the relay does
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert guard.answer() == text and guard.answers() == {0: text}
    assert held < 5 * len(text)


def delta_event(delta: dict[str, Any], index: int = 0) -> bytes:
    return (
        b"data: " + json.dumps({"choices": [{"index": index, "delta": delta}]}).encode() + b"\n\n"
    )


def tool_delta(call: int, arguments: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": call, "function": {"arguments": arguments}}]}


def test_refusals_and_tool_call_arguments_are_scanned_each_as_its_own_text() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"], flag=["ape"]))
    # Two calls' arguments interleaved: each call's pieces are one text, not the other's.
    events = [tool_delta(0, '{"q": "gor'), tool_delta(1, '{"q": "x'), tool_delta(0, 'illa"}')]
    scans = [guard.feed(delta_event(d)) for d in events]
    assert [s.action for s in scans] == ["pass", "pass", "deny"]
    refusal = ChatStreamGuard(TermScanner(["gorilla"], flag=["ape"]))
    assert refusal.feed(delta_event({"refusal": "an ape."}, 1)) == Scan("flag", "ape", 1)
    legacy = ChatStreamGuard(TermScanner(["gorilla"]))
    assert legacy.feed(delta_event({"function_call": {"arguments": "gorilla "}})).action == "deny"
    assert guard.texts() == {0: {"tool_calls[0]": '{"q": "gorilla"}', "tool_calls[1]": '{"q": "x'}}
    assert guard.answers() == {} and refusal.texts() == {1: {"refusal": "an ape."}}


def test_tool_call_arguments_are_read_through_their_json_escapes_however_they_are_cut() -> None:
    for raw in ['{"q": "\\u0067orilla"}', '{"q": "\\ud835\\udc20or\\u0456lla"}']:
        for cut in range(1, len(raw)):
            guard = ChatStreamGuard(TermScanner(["gorilla"]))
            scans = [guard.feed(delta_event(tool_delta(0, p))) for p in (raw[:cut], raw[cut:])]
            assert "deny" in [s.action for s in scans], (raw, cut)
            assert guard.texts() == {0: {"tool_calls[0]": raw}}  # the sample keeps them as sent


def test_what_a_client_does_not_read_as_the_term_passes() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]))
    pieces = [
        tool_delta(0, '{"q": "\\\\u0067orilla"}'),  # an escaped backslash: read as written
        tool_delta(1, '{"q": "\\u0067'),
        tool_delta(2, 'orilla"}'),  # another call's arguments
        {"content": "\\u0067orilla"},  # content is not JSON: shown as written
    ]
    assert [guard.feed(delta_event(d)).action for d in pieces] == ["pass"] * 4


def test_content_and_tool_calls_of_one_choice_do_not_join_into_a_term() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]))
    scans = [
        guard.feed(delta_event({"content": "gor"})),
        guard.feed(delta_event(tool_delta(0, "illa"))),
    ]
    assert [s.action for s in scans] == ["pass", "pass"]


@pytest.mark.parametrize("call", [-1, 128, "x", 0.5, None])
def test_a_tool_call_index_out_of_bounds_is_an_error(call: Any) -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]))
    with pytest.raises(SSEError, match="tool call index"):
        guard.feed(delta_event(tool_delta(call, "x")))


def response_event(kind: str, **fields: Any) -> bytes:
    """A Responses API event, named as the API names it."""
    doc = {"type": f"response.{kind}", "sequence_number": 0, **fields}
    return f"event: response.{kind}\ndata: ".encode() + json.dumps(doc).encode() + b"\n\n"


def text_delta(delta: str, output: int = 0, part: int = 0) -> bytes:
    return response_event(
        "output_text.delta", item_id="m", output_index=output, content_index=part, delta=delta
    )


def test_a_responses_stream_is_scanned_item_by_item() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"], flag=["ape"]))
    events = [
        response_event("created", response={"id": "r", "output": []}),
        text_delta("an ape. a gor"),
        response_event("function_call_arguments.delta", output_index=1, delta='{"q": "ril'),
        text_delta("la", part=1),  # another part of the message: a text of its own
    ]
    assert [guard.feed(e).action for e in events] == ["pass", "flag", "pass", "pass"]
    assert guard.feed(text_delta("illa!")) == Scan("deny", "gorilla", 0)
    assert guard.texts() == {
        0: {"content": "an ape. a gorilla!", "content[1]": "la"},
        1: {"arguments": '{"q": "ril'},
    }


def test_a_responses_stream_settles_a_held_term_when_its_item_or_the_response_ends() -> None:
    for ending in (
        response_event("output_item.done", output_index=0, item={"type": "message"}),
        response_event("completed", response={"id": "r", "output": []}),
        b"",  # the upstream ends
    ):
        guard = ChatStreamGuard(TermScanner(["gorilla"]))
        assert guard.feed(text_delta("a gorilla")) == PASS and guard.release() == b""
        assert (guard.feed(ending) if ending else guard.end()) == Scan("deny", "gorilla", 0)
    clean = ChatStreamGuard(TermScanner(["gorilla"]))
    clean.feed(text_delta("a gorilla") + text_delta("s"))
    assert clean.feed(response_event("completed", response={})) == PASS and clean.done


def test_responses_arguments_are_read_through_their_escapes_and_text_is_not() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]))
    arguments = response_event(
        "function_call_arguments.delta", output_index=1, delta='{"q": "\\u0067orilla"}'
    )
    assert guard.feed(arguments) == Scan("deny", "gorilla", 1)
    plain = ChatStreamGuard(TermScanner(["gorilla"]))
    assert plain.feed(text_delta("\\u0067orilla!")) == PASS  # shown as written


def block_event(kind: str, index: int = 0, **fields: Any) -> bytes:
    """An Anthropic Messages event, named as the API names it."""
    doc = {"type": kind, "index": index, **fields}
    return f"event: {kind}\ndata: ".encode() + json.dumps(doc).encode() + b"\n\n"


def text_block(text: str, index: int = 0) -> bytes:
    return block_event("content_block_delta", index, delta={"type": "text_delta", "text": text})


def test_an_anthropic_stream_is_scanned_block_by_block() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"], flag=["ape"]))
    start = b'event: message_start\ndata: {"type": "message_start", "message": {}}\n\n'
    thinking = block_event("content_block_delta", 1, delta={"type": "thinking_delta",
                                                            "thinking": "an ape"})  # fmt: skip
    json_delta = {"type": "input_json_delta", "partial_json": '{"q": "\\u0067or'}
    tool = block_event("content_block_delta", 2, delta=json_delta)
    assert [guard.feed(e).action for e in (start, text_block("a gor"), thinking, tool)] == [
        "pass", "pass", "pass", "pass"]  # fmt: skip
    assert guard.anthropic and guard.flags == set()  # "ape" ends its text: not settled yet
    assert guard.feed(block_event("content_block_stop", 1)) == Scan("flag", "ape", 1)
    arguments = {"type": "input_json_delta", "partial_json": 'illa"}'}
    assert guard.feed(block_event("content_block_delta", 2, delta=arguments)) == Scan(
        "deny", "gorilla", 2
    )
    assert guard.texts()[0] == {"content": "a gor"}


def test_an_anthropic_stream_settles_a_held_term_when_its_block_or_message_stops() -> None:
    for ending in (block_event("content_block_stop"), b'event: message_stop\ndata: {"type": '
                   b'"message_stop"}\n\n', b""):  # fmt: skip
        guard = ChatStreamGuard(TermScanner(["gorilla"]))
        assert guard.feed(text_block("a gorilla")) == PASS and guard.release() == b""
        assert (guard.feed(ending) if ending else guard.end()) == Scan("deny", "gorilla", 0)
    clean = ChatStreamGuard(TermScanner(["gorilla"]))
    plural = text_block("a gorilla") + text_block("s") + block_event("content_block_stop")
    assert clean.feed(plural) == PASS


def test_an_anthropic_stream_is_refused_with_an_event_named_error() -> None:
    named = error_events("no", anthropic=True)
    assert named.startswith(b"event: error\ndata: ") and b"[DONE]" not in named
    doc = json.loads(named.split(b"data: ", 1)[1])
    assert doc == {"type": "error", "error": {"message": "no", "type": "guardproxy",
                                              "code": "content_filter"}}  # fmt: skip


def test_a_block_that_starts_with_text_of_its_own_is_scanned() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]))
    block = {"type": "text", "text": "a gori"}
    assert guard.feed(block_event("content_block_start", 0, content_block=block)) == PASS
    assert guard.feed(text_block("lla!")) == Scan("deny", "gorilla", 0)
    tool = {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    assert guard.feed(block_event("content_block_start", 1, content_block=tool)) == PASS


def test_terms_held_in_many_choices_cost_linear_work() -> None:
    # Each held term was looked at again for every later event: n=8,000 choices that each
    # end in a term held the loop ~2 s, a quarter of that at 2,000.
    costs = []
    for n in (1_000, 4_000):
        scanner = TermScanner(["gorilla"], flag=["ape"])
        guard = ChatStreamGuard(scanner, max_choices=n, max_event=1 << 30)
        for i in range(n):
            guard.feed(chunk_event({i: "an ape! a gorilla" if i % 2 else "a big ape"}))
        assert guard.release() == chunk_event({0: "a big ape"})  # choice 1's term holds the rest
        for i in range(n):
            assert guard.feed(chunk_event({i: "s"}, finish="stop")) == PASS
        assert guard.flags == {"ape"} and guard.release().count(b"\n\n") == 2 * n - 1
        costs.append(guard.visited)
    assert costs[1] <= 5 * costs[0]


def ollama_line(doc: dict[str, Any]) -> bytes:
    return json.dumps({"model": "m", **doc}).encode() + b"\n"


def test_an_ollama_stream_is_scanned_line_by_line() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"], flag=["ape"]), ndjson=True)
    chat = [{"message": {"role": "assistant", "content": c}, "done": False} for c in ("a go", "r")]
    assert [guard.feed(ollama_line(doc)) for doc in chat] == [PASS, PASS]
    assert guard.release() == ollama_line(chat[0]) + ollama_line(chat[1])
    thinking = {
        "message": {"role": "assistant", "content": "", "thinking": "an ape"},
        "done": False,
    }
    assert guard.feed(ollama_line(thinking)) == PASS  # "ape" ends its text: not settled yet
    done = {"message": {"role": "assistant", "content": "illa"}, "done": True}
    assert guard.feed(ollama_line(done)) == Scan("deny", "gorilla", 0)
    assert guard.texts()[0] == {"content": "a gorilla", "thinking": "an ape"}
    generate = ChatStreamGuard(TermScanner(["gorilla"]), ndjson=True)
    assert generate.feed(ollama_line({"response": "a gorilla", "done": False})) == PASS
    assert generate.feed(ollama_line({"response": "", "done": True})) == Scan("deny", "gorilla", 0)
    assert generate.done


def test_an_ollama_tool_calls_arguments_are_read_string_by_string() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]), ndjson=True)
    call = {"function": {"name": "f", "arguments": {"a": "go", "b": ["rilla", {"c": "a gorilla"}]}}}
    line = ollama_line({"message": {"role": "assistant", "content": "", "tool_calls": [call]},
                        "done": False})  # fmt: skip
    assert guard.feed(line) == Scan("deny", "gorilla", 0)
    assert guard.texts()[0] == {"tool_call[0]": "go\nrilla\na gorilla\n"}


def test_an_ollama_line_of_more_tool_calls_than_are_kept_apart_is_an_error() -> None:
    calls = [{"function": {"name": "f", "arguments": {"q": "fine"}}}] * 128
    calls.append({"function": {"name": "f", "arguments": {"q": "a gorilla"}}})
    line = ollama_line({"message": {"content": "", "tool_calls": calls}, "done": False})
    with pytest.raises(SSEError, match="tool call index 128"):  # not the 129th left unread
        ChatStreamGuard(TermScanner(["gorilla"]), ndjson=True).feed(line)


def test_an_ollama_line_a_client_splits_in_two_is_read_as_two() -> None:
    # httpx (the ollama client's) splits lines as Python's splitlines does: at U+2028 too.
    fine, denied = ({"message": {"content": text}, "done": False} for text in ("a ", "gorilla."))
    line = json.dumps(fine) + "\u2028" + json.dumps(denied) + "\n"
    assert [json.loads(part) for part in line.splitlines()] == [fine, denied]
    guard = ChatStreamGuard(TermScanner(["gorilla"]), ndjson=True, skip_unreadable=True)
    assert guard.feed(line.encode()).action == "deny"


def test_an_ollama_stream_is_refused_with_a_line_its_clients_raise() -> None:
    guard = ChatStreamGuard(TermScanner(["gorilla"]), ndjson=True)
    assert guard.error("no") == b'{"error":"no"}\n'
    assert json.loads(error_events("no", ndjson=True)) == {"error": "no"}
