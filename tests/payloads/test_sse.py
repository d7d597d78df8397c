"""The event-stream parser: any chunking, every line ending, limits and linear cost."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardproxy.payloads.sse import Event, EventParser, SSEError

STREAM = (
    b"\xef\xbb\xbf: a comment\r\n"
    b"event: delta\r\n"
    b"id: 7\r\n"
    b'data: {"text": "caf\xc3\xa9"}\r\n'
    b"data:second line\r\n"
    b"retry: 1000\r\n\r\n"
    b"data\n\n"
    b"id: 8\n\n"
    b"data: cr only\r\r"
    b"data: [DONE]\n\n"
    b"data: never finished"
)
EXPECTED = [
    Event('{"text": "caf\u00e9"}\nsecond line', "delta", "7"),
    Event("", "message", "7"),
    Event("cr only", "message", "8"),
    Event("[DONE]", "message", "8"),
]


def parse(chunks: list[bytes], max_event: int = 1 << 20) -> list[Event]:
    parser = EventParser(max_event)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events + parser.close()


def test_one_chunk() -> None:
    assert parse([STREAM]) == EXPECTED


def test_every_split_point_and_single_bytes_give_the_same_events() -> None:
    for cut in range(len(STREAM) + 1):
        assert parse([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut
    assert parse([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_a_cr_ending_one_chunk_and_a_lf_starting_the_next_are_one_line_end() -> None:
    assert parse([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [Event("a\nb")]
    assert parse([b"data: a\r", b"\r"]) == [Event("a")]


def test_a_bom_only_counts_at_the_start() -> None:
    assert parse([b"\xef", b"\xbb\xbfdata: x\n\n"]) == [Event("x")]
    assert parse([b"data: x\n\n\xef\xbb\xbfdata: y\n\n"]) == [Event("x")]  # an unknown field


def test_an_event_larger_than_the_limit_is_an_error() -> None:
    parser = EventParser(max_event=1000)
    parser.feed(b"data: " + b"a" * 500 + b"\n")
    with pytest.raises(SSEError, match="larger than 1000 bytes"):
        parser.feed(b"data: " + b"b" * 500 + b"\n")


@pytest.mark.parametrize("large", [b"data: " + b"c" * 2000 + b"\n", b"data: " + b"c" * 2000])
def test_the_error_holds_the_events_completed_before_the_large_one(large: bytes) -> None:
    with pytest.raises(SSEError) as raised:
        EventParser(max_event=1000).feed(b"data: x\n\ndata: y\n\n" + large)
    assert raised.value.events == [Event("x"), Event("y")]


def test_a_stream_without_newlines_is_cut_off_not_buffered() -> None:
    parser = EventParser(max_event=64 * 1024)
    fed = 0
    with pytest.raises(SSEError):
        for _ in range(10_000):
            parser.feed(b"x" * 1024)
            fed += 1024
    assert fed <= 64 * 1024
    assert len(parser._buf) <= 65 * 1024


def test_cost_is_linear_in_the_bytes_whatever_the_chunking() -> None:
    line = b"data: " + b"y" * 50_000 + b"\n\n"
    for size in (1, 7, 4096):
        parser = EventParser()
        events = [e for i in range(0, len(line), size) for e in parser.feed(line[i : i + size])]
        assert len(events) == 1
        assert parser.scanned == len(line)  # each byte searched once, not once per chunk


def test_many_lines_in_one_chunk() -> None:
    body = b"".join(b"data: %d\n\n" % i for i in range(20_000))
    parser = EventParser()
    events = parser.feed(body)
    assert [e.data for e in events] == [str(i) for i in range(20_000)]
    assert parser.scanned == len(body)


texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"), max_size=20
)
events = st.builds(
    Event, st.lists(texts, min_size=1, max_size=3).map("\n".join), texts.filter(bool), texts
)


def serialize(event: Event) -> bytes:
    lines = [f"event: {event.event}", f"id: {event.id}"]
    lines += [f"data: {line}" for line in event.data.split("\n")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=5), st.lists(st.integers(1, 40), max_size=30))
def test_any_events_in_any_chunking(sent: list[Event], cuts: list[int]) -> None:
    body = b"".join(serialize(e) for e in sent)
    chunks, pos = [], 0
    for cut in cuts:
        chunks.append(body[pos : pos + cut])
        pos += cut
    chunks.append(body[pos:])
    assert parse(chunks) == sent


def test_an_event_of_many_short_lines_holds_about_its_bytes() -> None:
    # A million one-byte data lines were a million strings: ~50 bytes held for each counted.
    parser = EventParser(max_event=2 << 20)
    chunk = b"data: x\n" * 8192
    tracemalloc.start()
    for _ in range(16):  # 1 MiB of lines, one event not yet ended
        parser.feed(chunk)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert held < 1 << 20, held  # 256 KiB of data; as strings, over 6 MiB
    [event] = parser.feed(b"\n")
    assert event.data == "\n".join(["x"] * 8192 * 16)
