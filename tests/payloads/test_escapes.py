"""Tool-call arguments read as a client's JSON parser reads them, whole or in pieces."""

from __future__ import annotations

import json
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from guardproxy.payloads.escapes import (
    Unescaper,
    json_strings,
    unescape,
    unescaped_positions,
)

# Letters, the characters JSON must escape, a look-alike, an astral letter (a surrogate
# pair when escaped), a lone surrogate, and the backslash and "u" an escape is made of.
TEXT = st.text(alphabet='ag\\u"/\n\t\x01\u0433\U0001d420\ud800 ', max_size=20)


def escaped(text: str) -> str:
    """`text` as a JSON string, every character beyond ASCII as a \\u escape."""
    return json.dumps(text)


@settings(max_examples=300, deadline=None)
@given(TEXT, st.booleans())
def test_a_string_reads_as_the_json_parser_reads_it(text: str, ascii_only: bool) -> None:
    document = json.dumps({text: [text]}, ensure_ascii=ascii_only)
    assert unescape(document) == "{" + '"' + text + '": ["' + text + '"]}'
    assert json.loads(document) == {text: [text]}


@settings(max_examples=300, deadline=None)
@given(TEXT, st.lists(st.integers(0, 60), max_size=4))
def test_pieces_read_as_the_whole_wherever_they_are_cut(text: str, cuts: list[int]) -> None:
    raw = escaped(text)
    reader = Unescaper()
    bounds = [0, *sorted(min(c, len(raw)) for c in cuts), len(raw)]
    read = "".join(reader.feed(raw[a:b]) for a, b in pairwise(bounds))
    assert read == unescape(raw) == '"' + text + '"'


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='"\\u0dDa8c7n{}:x ', max_size=30))
def test_any_text_reads_alike_a_string_at_a_time_and_an_escape_at_a_time(text: str) -> None:
    # unescape reads each string of a document in C; the position map, an escape at a time.
    assert unescape(text) == unescaped_positions(text)[0]


def test_a_surrogate_pair_cut_anywhere_reads_as_one_letter() -> None:
    raw = '"\\ud835\\udc20orilla"'  # a mathematical bold g
    for cut in range(len(raw) + 1):
        reader = Unescaper()
        assert reader.feed(raw[:cut]) + reader.feed(raw[cut:]) == '"\U0001d420orilla"', cut


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_an_unescaped_index_maps_back_to_where_its_character_was_written(text: str) -> None:
    raw = escaped(text)
    read, origin = unescaped_positions(raw)
    assert read == unescape(raw)
    for k, char in enumerate(read):
        written = raw[origin(k) : origin(k + 1)]  # the character, or the escape of it
        assert written == char or json.loads('"' + written + '"') == char, (k, written)
    assert origin(len(read)) == len(raw)


def test_what_a_parser_refuses_or_another_escape_spells_stays_as_written() -> None:
    assert unescape("\\x \\u12 \\") == "\\x \\u12 \\"
    assert unescape('"\\\\u0067"') == '"\\u0067"'  # an escaped backslash, then "u0067"
    assert unescape("\\ud835x") == "\ud835x"  # a lone surrogate, as json.loads reads it
    reader = Unescaper()
    assert [reader.feed(p) for p in ["a\\", "\\", "u0067", "\\u00", "67"]] == [
        "a",
        "\\",
        "u0067",
        "",
        "g",
    ]


def test_the_strings_of_a_json_document_are_found_and_other_text_is_not_json() -> None:
    document = '{"q": "a \\"b\\"", "n": [1, "c"]}'
    assert [document[a:b] for a, b in json_strings(document) or []] == [
        "q",
        'a \\"b\\"',
        "n",
        "c",
    ]
    assert json_strings('{"q": "cut') is None and json_strings("gorilla") is None


def test_what_waits_for_the_next_piece_is_at_most_one_open_escape() -> None:
    # Read a character at a time, every piece re-reads only what waits: linear in the stream.
    raw = escaped("\U0001d420g\u0433" * 2_000) + "\\ud835\\udc2"
    reader = Unescaper()
    read = []
    for char in raw:
        read.append(reader.feed(char))
        assert len(reader._open) <= len("\\ud835\\udc2")
    assert "".join(read) == unescape(raw[: -len("\\ud835\\udc2")])
