"""Deny and flag terms as one pattern: whole words, any case, found as a client reads them.

Text is folded before a term is looked for in it: compatibility letters (full-width,
ligatures, mathematical, circled) as the letters they show, letters of Cyrillic, Greek,
Armenian and Cherokee (and Latin ones beyond ASCII) that look like a Latin letter as that
letter, case folded, and characters that render as nothing or marks drawn over a letter
taken out, wherever and however many a model was talked into writing. Terms are folded
alike, so `café` is found in `cafe` written with a combining accent, and a Cyrillic term in
Cyrillic text. Terms in scripts written without spaces between words are found inside a run
of text. ASCII text is only lower-cased, so a match's span is the same in the original.

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
UNSPACED = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1100-\u11ff\u1780-\u17ff\u3040-\u30ff\u3130-\u318f"
    "\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff65-\uffdc"
    "\U00020000-\U0003134f]"
)
# A word boundary where "_" counts as a space: Markdown shows _term_ as the word in italics.
_LETTER = r"[^\W_]"
_BEFORE = f"(?<!{_LETTER})"
_AFTER = f"(?!{_LETTER})"
WORD = re.compile(_LETTER)  # a character that goes on a word: a term before it is not whole
_END = ""  # the trie's mark of a whole term


# Letters that look like a Latin letter, by that letter. They are the entries of Unicode's
# confusables.txt (UTS #39 "skeleton" data, version 14.0.0) whose source is one letter of
# Latin beyond ASCII, Greek, Cyrillic, Armenian or Cherokee, not changed by NFKD, and whose
# prototype is one ASCII letter, read in lower case; a capital whose prototype is "l" (the
# skeleton's one for I) reads as "i", as a Latin I does here. Digits are left out (0 as o, 1
# as l): a number would read as a word. So are sequences (rn as m) and other scripts.
_LOOKALIKES = {
    "a": "\u0251\u0391\u03b1\u0410\u0430\u13aa",
    "b": "\u0184\u0392\u0412\u042c\u13cf\u13f4\ua7b4",
    "c": "\u0421\u0441\u13df\u1d04\uabaf",
    "d": "\u0501\u13a0\u13e7",
    "e": "\u0395\u0415\u0435\u04bd\u13ac\uab32",
    "f": "\u03dc\u0584\u1e9d\ua798\ua799\uab35",
    "g": "\u018d\u0261\u050c\u0581\u13c0\u13f3\u1d83",
    "h": "\u0397\u041d\u04bb\u0570\u13bb\u13c2",
    "i": "\u0131\u0196\u0269\u026a\u0399\u03b9\u0406\u0456\u04c0\u04cf\u13a5\ua647\uab75",
    "j": "\u037f\u03f3\u0408\u0458\u13ab\ua7b2",
    "k": "\u039a\u041a\u13e6",
    "l": "\u01c0\u13de",
    "m": "\u039c\u03fa\u041c\u13b7",
    "n": "\u039d\u0578\u057c",
    "o": "\u039f\u03bf\u03c3\u041e\u043e\u0555\u0585\u1d0f\u1d11\uab3d",
    "p": "\u03a1\u03c1\u0420\u0440\u13e2",
    "q": "\u051b\u0563\u0566",
    "r": "\u01a6\u0433\u13a1\u13d2\u1d26\uab47\uab48\uab81",
    "s": "\u01bd\u0405\u0455\u054f\u13d5\u13da\ua731\uabaa",
    "t": "\u03a4\u0422\u13a2",
    "u": "\u028b\u03c5\u054d\u057d\u1d1c\ua79f\uab4e\uab52",
    "v": "\u03bd\u0474\u0475\u13d9\u1d20\uaba9",
    "w": "\u026f\u0461\u051c\u051d\u0561\u13b3\u13d4\u1d21\uab83",
    "x": "\u03a7\u0425\u0445\ua7b3",
    "y": "\u0263\u028f\u03a5\u03b3\u0423\u0443\u04ae\u04af\u13a9\u13bd\u1d8c\u1eff\uab5a",
    "z": "\u0396\u13c3\u1d22\uab93",
}
LOOKALIKES = {ord(c): ord(latin) for latin, chars in _LOOKALIKES.items() for c in chars}
_TABLE_FROM = 128  # from this many characters a text is read through a numpy table


def fold(text: str) -> str:
    """The text as terms are looked for in it: ASCII text lower-cased (as long as it was).

    Look-alikes are read before case is folded, as the letters they show: a Cyrillic capital
    en looks like an H, its small letter like no Latin one. A term's letters match both cases
    (see `term_pattern`), so a Cyrillic term still matches Cyrillic text in either case.
    """
    if text.isascii():
        return text.lower()
    if len(text) <= _SHORT:
        return _fold_short(text)
    return _fold(text)


def _fold(text: str) -> str:
    return _HIDDEN.sub("", _latin(unicodedata.normalize("NFKD", text)).casefold())


# A stream's text comes a token at a time, and tokens repeat: one folded is kept.
_SHORT = 16
_fold_short = lru_cache(maxsize=8192)(_fold)


def _latin(text: str) -> str:
    """Look-alike letters as the Latin ones they show; the rest as it is."""
    if len(text) < _TABLE_FROM:
        return text.translate(LOOKALIKES)  # a dict look-up a character: ~40 ns each
    import numpy as np  # here: the hot path loads numpy only for a text that needs it

    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    table = _table()
    mapped = table[np.minimum(codes, len(table) - 1)]  # the last entry maps to itself
    if len(table) - 1 in mapped:  # a character past the table's end: kept as it was
        mapped = np.where(codes < len(table), mapped, codes)
    data: bytes = mapped.tobytes()
    return data.decode("utf-32-le", "surrogatepass")


@lru_cache(maxsize=1)
def _table() -> Any:
    """Every code point up to the last look-alike's, each to what it reads as."""
    import numpy as np

    table = np.arange(max(LOOKALIKES) + 2, dtype="<u4")
    table[list(LOOKALIKES)] = list(LOOKALIKES.values())
    return table


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
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    ends = np.cumsum(table[codes])  # int64, searched as it is: a cast would copy it a call
    if ends[-1] != len(folded):  # the text folded whole differs: fold it as the map does
        folded = "".join(_fold_char(char) for char in text)
    return folded, lambda k: int(np.searchsorted(ends, np.int64(k), side="right"))


@lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    return fold(char)


def term_pattern(terms: Sequence[str]) -> re.Pattern[str]:
    """Any of the terms as a whole word (or inside unspaced text), in folded text.

    A letter whose capital folds to another letter than it does (a Cyrillic small en to
    itself, its capital to "h") matches either, so a term matches its text in any case.
    """
    root = _trie(terms)
    if not root:
        raise ValueError("term_pattern needs at least one term")
    first = "".join(re.escape(char) for key in sorted(root) for char in key)
    spaced = [c for c in sorted(root) if not UNSPACED.match(c)]
    unspaced = [c for c in sorted(root) if UNSPACED.match(c)]
    groups = [_BEFORE + _choice(spaced, root)] if spaced else []
    groups += [_choice(unspaced, root)] if unspaced else []
    # The lookahead rejects most positions on one character test, and the word boundary is
    # tested once, before any branch is tried. Text is folded to lower case first: a branch
    # that starts with a plain literal is skipped on one comparison, an ignore-case one is not.
    return re.compile(f"(?=[{first}])(?:{'|'.join(groups)})")


def _choice(keys: list[str], node: dict[str, Any]) -> str:
    return "(?:" + "|".join(_letter(k) + _branch(k, node[k]) for k in keys) + ")"


def _letter(key: str) -> str:
    """A trie key as a pattern: one letter, or the letters a term's letter folds to."""
    if len(key) == 1:
        return re.escape(key)
    return "[" + "".join(re.escape(char) for char in key) + "]"


def longest_span(terms: Sequence[str]) -> int:
    """The most characters of folded text a match of `term_pattern(terms)` can take."""
    return max(len(fold(t)) for t in terms)


def _trie(terms: Sequence[str]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for term in terms:
        node = root
        for key in term_letters(term):
            node = node.setdefault(key, {})
        if node is not root:
            node[_END] = {}
    return root


def term_letters(term: str) -> list[str]:
    """The term folded, a key a letter: the letter, then what its other case folds to if
    that differs (a Cyrillic small en's key is itself and "h": its capital looks like an H)."""
    folded = fold(term)
    if term.isascii():
        return list(folded)
    keys: list[str] = []
    for char in term:
        own = _fold_char(char)
        cases = {own, _fold_char(char.lower()), _fold_char(char.upper())}
        if len(own) == 1 and len(cases) > 1 and all(len(c) == 1 for c in cases):
            keys.append(own + "".join(sorted(cases - {own})))
        else:
            keys += own
    if "".join(key[0] for key in keys) != folded:  # folded whole, the term reads otherwise
        return list(folded)
    return keys


def _branch(key: str, node: dict[str, Any]) -> str:
    """The rest of every term that goes on from `key`: longer ones first."""
    chain = ""
    while _END not in node and len(node) == 1:  # one way on: no group
        ((key, node),) = node.items()
        chain += _letter(key)
    alternatives = [_letter(k) + _branch(k, node[k]) for k in sorted(node) if k != _END]
    if _END in node:
        alternatives.append("" if UNSPACED.match(key) else _AFTER)  # the term ends here
    if len(alternatives) == 1:
        return chain + alternatives[0]
    return chain + "(?:" + "|".join(alternatives) + ")"


class TermNames:
    """The listed term a match of `term_pattern(terms)` reads as (a later one on a tie)."""

    __slots__ = ("_exact", "_loose", "_same")

    def __init__(self, terms: Sequence[str]) -> None:
        self._exact = {fold(t): t for t in terms}
        # A term whose letters match either case is matched by text holding either: each
        # such letter and what its other case folds to are read as one letter, the first of
        # their group, when a match is not a term as folded.
        spelled = [(t, term_letters(t)) for t in terms if not t.isascii()]
        varied = [(t, keys) for t, keys in spelled if any(len(k) > 1 for k in keys)]
        groups: dict[str, str] = {}
        for _, keys in varied:
            for key in keys:
                for char in key[1:]:
                    first, other = _group(groups, key[0]), _group(groups, char)
                    if first != other:
                        groups[other] = first
        self._same = {ord(char): _group(groups, char) for char in groups}
        self._loose = {"".join(k[0] for k in keys).translate(self._same): t for t, keys in varied}

    def get(self, match: str) -> str | None:
        """The listed term `match` (folded text a term matched) is one of, if any."""
        term = self._exact.get(match)
        if term is None and self._same:
            term = self._loose.get(match.translate(self._same))
        return term


def _group(groups: dict[str, str], char: str) -> str:
    """The first letter of `char`'s group: it, or the one it was joined to, and so on."""
    while (joined := groups.get(char, char)) != char:
        char = joined
    return char
