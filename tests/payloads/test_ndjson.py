"""The NDJSON line parser: any chunking, every line ending, blank lines, limits, linear cost."""

from __future__ import annotations

import pytest

from guardproxy.payloads.ndjson import LineParser
from guardproxy.payloads.sse import SSEError

BODY = b'{"a": 1}\n\n{"b": "caf\xc3\xa9"}\r\n{"c": 3}\r{"d": 4}\n{"never": "ended"'
LINES = ['{"a": 1}', '{"b": "caf\u00e9"}', '{"c": 3}', '{"d": 4}']


def parse(chunks: list[bytes], max_event: int = 1 << 20) -> list[str]:
    parser = LineParser(max_event)
    return [event.data for chunk in chunks for event in parser.feed(chunk)]


def test_every_split_point_and_single_bytes_give_the_same_lines() -> None:
    for cut in range(len(BODY) + 1):
        assert parse([BODY[:cut], BODY[cut:]]) == LINES, cut
    assert parse([BODY[i : i + 1] for i in range(len(BODY))]) == LINES


def test_each_line_ends_at_its_offset_in_the_stream() -> None:
    parser = LineParser()
    events = parser.feed(b'{"a": 1}\r') + parser.feed(b'\n{"b": 2}\n{"c"')
    assert [e.end for e in events] == [9, 19]
    assert parser.boundary == 19  # the CR's LF, then the second line: what may be released


def test_a_line_larger_than_the_limit_is_an_error_holding_the_lines_before_it() -> None:
    with pytest.raises(SSEError, match="larger than 100 bytes") as raised:
        LineParser(max_event=100).feed(b'{"a": 1}\n' + b"x" * 101 + b"\n")
    assert [e.data for e in raised.value.events] == ['{"a": 1}']
    parser = LineParser(max_event=100)
    with pytest.raises(SSEError):  # no line end at all: cut off, not buffered
        for _ in range(10):
            parser.feed(b"y" * 50)
    assert len(parser._buf) <= 150


def test_cost_is_linear_in_the_bytes_whatever_the_chunking() -> None:
    line = b'{"text": "' + b"y" * 50_000 + b'"}\n'
    for size in (1, 7, 4096):
        parser = LineParser()
        lines = [e for i in range(0, len(line), size) for e in parser.feed(line[i : i + size])]
        assert len(lines) == 1 and parser.scanned == len(line)
