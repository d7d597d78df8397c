"""Label terms found as a client reads them, in an answer and in a stream alike."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardproxy.payloads.chatstream import ChatStreamGuard, TermScanner
from guardproxy.payloads.terms import (
    LOOKALIKES,
    TermNames,
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
    "Cyrillic o": "a g\u043erilla",
    "Greek omicron and iota": "a g\u03bfr\u03b9lla",
    "Armenian oh": "a g\u0585rilla",
    "Latin script g": "a \u0261orilla",
    "Cyrillic capitals": "A G\u041eRILL\u0410",
    "Cherokee capital G": "a \u13c0ORILLA",
    "mathematical bold capitals": "a \U0001d406\U0001d40e\U0001d411\U0001d408\U0001d40b"
    "\U0001d40b\U0001d400",
    "look-alike under a combining mark": "a g\u043e\u0304rilla",
}
KEPT = ["gorillas", "a grape", "cafeteria", "strasses", "大猩"]
# Ordinary Russian and Greek: words of letters that look Latin only as capitals, or not at all.
KEPT += ["\u0433\u043e\u0440\u0438\u043b\u043b\u0430", "\u03b3\u03bf\u03c1\u03af\u03bb\u03b1\u03c2"]
KEPT += ["g0rilla", "gor1lla"]  # digits are not read as letters


@pytest.mark.parametrize("text", FOUND.values(), ids=FOUND.keys())
def test_a_term_written_to_slip_past_is_found_in_answers_and_streams(text: str) -> None:
    assert term_pattern(TERMS).search(fold(text))
    guard = ChatStreamGuard(TermScanner(TERMS))
    assert "deny" in (guard.feed(chunk_event({0: text})).action, guard.end().action)
    for cut in range(1, len(text)):  # every split of the text between two events
        split = ChatStreamGuard(TermScanner(TERMS))
        scans = [split.feed(chunk_event({0: text[:cut]})), split.feed(chunk_event({0: text[cut:]}))]
        assert "deny" in [s.action for s in [*scans, split.end()]], cut


@pytest.mark.parametrize("text", KEPT)
def test_other_words_are_kept(text: str) -> None:
    guard = ChatStreamGuard(TermScanner(TERMS))
    assert guard.feed(chunk_event({0: text})).action == "pass" and guard.end().action == "pass"


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
@given(
    st.text(alphabet="ab \u200b\u0332\ufb01\u00df\u00e9\u5927\uff47\u00ad\u0430\ud800", max_size=30)
)
def test_a_folded_index_maps_back_to_the_character_it_came_from(text: str) -> None:
    folded, origin = folded_positions(text)
    parts = [fold(char) for char in text]
    assert folded == "".join(parts)
    expected = [i for i, part in enumerate(parts) for _ in part] + [len(text)]
    assert [origin(k) for k in range(len(folded) + 1)] == expected


NET = "\u043d\u0435\u0442"  # Russian for "no": its capitals look like HET, its letters not


def test_capitals_that_look_latin_only_as_capitals_read_as_latin_ones() -> None:
    pattern = term_pattern(["bomb", "hitman"])
    bomb, hitman = "\u0412\u041e\u041c\u0412", "\u041d\u0406\u0422\u041c\u0410N"
    assert pattern.findall(fold(f"a {bomb}, a {hitman}")) == ["bomb", "hitman"]
    assert not pattern.search(fold(f"a {bomb.lower()}, a {hitman.lower()}"))


def test_a_cyrillic_term_matches_cyrillic_text_in_any_case_and_is_named_as_listed() -> None:
    terms = [NET, "ho", "gorilla"]
    pattern, names = term_pattern(terms), TermNames(terms)
    for text in [NET, NET.upper(), NET.capitalize(), "\u043d\u0415\u0442"]:
        [match] = pattern.findall(fold(f"say {text}!"))
        assert names.get(match) == NET, text
    but = "\u043d\u043e"  # Russian for "but": like HO in capitals only
    assert not pattern.search(fold(f"{but} the net")) and names.get("ho") == "ho"
    assert [names.get(m) for m in pattern.findall(fold(but.upper()))] == ["ho"]
    scanner = TermScanner([NET], flag=["gorilla"])
    assert [s.term for s in scanner.scan("", f"g\u043erilla, {NET.upper()}.")[1]] == [
        "gorilla",
        NET,
    ]


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet="".join(map(chr, LOOKALIKES)) + "ab\u0436\uabb0\U0001d420\ud800", min_size=1)
)
def test_a_long_text_reads_its_look_alikes_as_each_letter_alone_does(text: str) -> None:
    long = text * (200 // len(text) + 1)  # past the length a table is built for
    assert fold(long) == "".join(fold(char) for char in long)
