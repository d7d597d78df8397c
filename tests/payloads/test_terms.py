"""Label terms found as a client reads them, in an answer and in a stream alike."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardproxy.payloads.chatstream import ChatStreamGuard, TermScanner
from guardproxy.payloads.terms import (
    fold,
    folded_positions,
    longest_span,
    term_key,
    term_pattern,
)
from tests.payloads.test_chatstream import chunk_event

TERMS = ["gorilla", "café", "straße", "大猩猩", "สถาบันกษัตริย์", "고릴라"]

FOUND = {
    "bidi embedding": "a gor\u202ailla",
    "isolate": "a gor\u2066illa",
    "variation selector": "a gor\ufe0filla",
    "tag character": "a gor\U000e0020illa",
    "grapheme joiner": "a gor\u034filla",
    "Mongolian selector": "a gor\u180billa",
    "Hangul filler": "a gor\u3164illa",
    "combining mark on one letter": "a gor\u0332illa",
    "combining mark on every letter": "".join(c + "\u0332" for c in "gorilla"),
    "full-width": "a " + "".join(chr(ord(c) + 0xFEE0) for c in "gorilla") + " here",
    "mathematical bold": "a \U0001d420\U0001d428\U0001d42b\U0001d422\U0001d425\U0001d425\U0001d41a",
    "Markdown italics": "a _gorilla_ here",
    "Markdown bold": "a __gorilla__ here",
    "decomposed": "un cafe\u0301 noir",
    "full case folding": "die STRASSE hier",
    "Chinese in a sentence": "这是一只大猩猩。",
    "Thai in a sentence": "ข่าวสถาบันกษัตริย์วันนี้",
    "Korean with a particle": "고릴라가 왔다",
}
KEPT = ["gorillas", "a grape", "cafeteria", "strasses", "大猩"]


@pytest.mark.parametrize("text", FOUND.values(), ids=FOUND.keys())
def test_a_term_written_to_slip_past_is_found_in_answers_and_streams(text: str) -> None:
    assert term_pattern(TERMS).search(fold(text))
    guard = ChatStreamGuard(TermScanner(TERMS))
    assert guard.feed(chunk_event({0: text})).action == "deny"
    for cut in range(1, len(text)):  # every split of the text between two events
        split = ChatStreamGuard(TermScanner(TERMS))
        scans = [split.feed(chunk_event({0: text[:cut]})), split.feed(chunk_event({0: text[cut:]}))]
        assert "deny" in [s.action for s in scans], cut


@pytest.mark.parametrize("text", KEPT)
def test_other_words_are_kept(text: str) -> None:
    guard = ChatStreamGuard(TermScanner(TERMS))
    assert guard.feed(chunk_event({0: text})).action == "pass"


def test_every_spelling_of_a_term_has_one_name() -> None:
    wide = "\uff43\uff41\uff46\u00e9"  # full-width "caf", then "é"
    assert {term_key(t) for t in ["café", "cafe\u0301", "CAFÉ", wide]} == {"cafe"}
    assert term_key("gor\u200b\u0332illa") == "gorilla"
    assert longest_span(["straße", "ape"]) == len("strasse")


def test_the_pattern_grows_with_the_terms_not_its_work() -> None:
    # A trie: one path of letters is followed at each position, however many terms there are.
    many = [f"term{i:05d}x" for i in range(5000)] + ["gorilla"]
    pattern = term_pattern(many)
    assert pattern.findall("a term01234x and a gorilla, not term01234") == ["term01234x", "gorilla"]
    assert term_pattern(["a" * n for n in range(1, 101)]).findall("aaa") == ["aaa"]


async def test_a_match_is_named_as_the_policy_lists_the_term() -> None:
    from tests.guards.test_labels import answer, chain_for, chat

    chain = chain_for({"action": "flag", "deny": ["Café"]}, "openai")
    ex = await answer(chain, chat("un cafe\u0301 noir, un CAFÉ"))
    assert ex.flags == ["label:café"] and ex.annotations["X-Guard-Flag"] == "labels=2"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab \u200b\u0332\ufb01\u00df\u00e9\u5927\uff47\u00ad", max_size=30))
def test_a_folded_index_maps_back_to_the_character_it_came_from(text: str) -> None:
    folded, origin = folded_positions(text)
    parts = [fold(char) for char in text]
    assert folded == "".join(parts)
    expected = [i for i, part in enumerate(parts) for _ in part] + [len(text)]
    assert [origin(k) for k in range(len(folded) + 1)] == expected
