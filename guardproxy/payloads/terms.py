"""Deny and flag terms as one pattern: whole words, any case, found as a client reads them.

Text is folded before a term is looked for in it: case folded, compatibility letters
(full-width, ligatures, mathematical, circled) as the letters they show, and characters that
render as nothing or marks drawn over a letter taken out, wherever and however many a model
was talked into writing. Terms are folded alike, so `café` is found in `cafe` written with a
combining accent. Terms in scripts written without spaces between words are found inside a
run of text. ASCII text is only lower-cased, so a match's span is the same in the original.

The pattern is a trie of the folded terms: at each position it follows one path of letters,
so its cost depends on the text and the longest term, not on how many terms there are.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

# Characters that render as nothing (soft hyphen, zero-width space and joiners, direction
# marks, embeddings and isolates, word joiner, variation selectors, fillers, tags, byte
# order mark) and the combining marks drawn over Latin, Greek and Cyrillic letters.
HIDDEN = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u2069\u3164\ufe00-\ufe0f\ufeff\uffa0"
    "\U0001bca0-\U0001bca3\U000e0000-\U000e007f\U000e0100-\U000e01ef"
    "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
)
_HIDDEN = re.compile(f"[{HIDDEN}]+")
# Scripts written without spaces between words (Han, kana, Thai, Lao, Myanmar, Khmer), and
# Hangul, whose particles join the noun: a term's edge in them needs no word boundary.
_UNSPACED = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1100-\u11ff\u1780-\u17ff\u3040-\u30ff\u3130-\u318f"
    "\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff65-\uffdc"
    "\U00020000-\U0003134f]"
)
# A word boundary where "_" counts as a space: Markdown shows _term_ as the word in italics.
_BEFORE = r"(?<![^\W_])"
_AFTER = r"(?![^\W_])"
_END = ""  # the trie's mark of a whole term


def fold(text: str) -> str:
    """The text as terms are looked for in it: ASCII text lower-cased (as long as it was)."""
    if text.isascii():
        return text.lower()
    return _HIDDEN.sub("", unicodedata.normalize("NFKD", text.casefold()))


def term_key(text: str) -> str:
    """What a term, or a match of one, reads as: the same for every spelling of a term."""
    return fold(text)


def folded_positions(text: str) -> tuple[str, Callable[[int], int]]:
    """The text folded, and where in `text` a folded index comes from.

    In C whatever the text: each distinct character is folded once, and a folded index is
    mapped back by a search in the running total of what each character folded to (hidden
    ones to none, a ligature to two), read through a table of code points.
    """
    folded = fold(text)
    sizes = {ord(char): len(_fold_char(char)) for char in set(text)}
    if all(size == 1 for size in sizes.values()):
        return folded, lambda k: k
    import numpy as np  # here: the hot path loads numpy only for a text that needs it

    table = np.zeros(max(sizes) + 1, dtype=np.int64)
    table[list(sizes)] = list(sizes.values())
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    ends = np.cumsum(table[codes])  # int64, searched as it is: a cast would copy it a call
    if ends[-1] != len(folded):  # the text folded whole differs: fold it as the map does
        folded = "".join(_fold_char(char) for char in text)
    return folded, lambda k: int(np.searchsorted(ends, np.int64(k), side="right"))


@lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    return fold(char)


def term_pattern(terms: Sequence[str]) -> re.Pattern[str]:
    """Any of the terms as a whole word (or inside unspaced text), in folded text."""
    root = _trie(terms)
    if not root:
        raise ValueError("term_pattern needs at least one term")
    first = "".join(re.escape(char) for char in sorted(root))
    spaced = [c for c in sorted(root) if not _UNSPACED.match(c)]
    unspaced = [c for c in sorted(root) if _UNSPACED.match(c)]
    groups = [_BEFORE + _choice(spaced, root)] if spaced else []
    groups += [_choice(unspaced, root)] if unspaced else []
    # The lookahead rejects most positions on one character test, and the word boundary is
    # tested once, before any branch is tried. Text is folded to lower case first: a branch
    # that starts with a plain literal is skipped on one comparison, an ignore-case one is not.
    return re.compile(f"(?=[{first}])(?:{'|'.join(groups)})")


def _choice(chars: list[str], node: dict[str, Any]) -> str:
    return "(?:" + "|".join(re.escape(c) + _branch(c, node[c]) for c in chars) + ")"


def longest_span(terms: Sequence[str]) -> int:
    """The most characters of folded text a match of `term_pattern(terms)` can take."""
    return max(len(fold(t)) for t in terms)


def _trie(terms: Sequence[str]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for term in terms:
        node = root
        for char in fold(term):
            node = node.setdefault(char, {})
        if node is not root:
            node[_END] = {}
    return root


def _branch(char: str, node: dict[str, Any]) -> str:
    """The rest of every term that goes on from `char`: longer ones first."""
    chain = ""
    while _END not in node and len(node) == 1:  # one way on: no group
        ((char, node),) = node.items()
        chain += re.escape(char)
    alternatives = [re.escape(c) + _branch(c, node[c]) for c in sorted(node) if c != _END]
    if _END in node:
        alternatives.append("" if _UNSPACED.match(char) else _AFTER)  # the term ends here
    if len(alternatives) == 1:
        return chain + alternatives[0]
    return chain + "(?:" + "|".join(alternatives) + ")"
