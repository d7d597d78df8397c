"""Deny and flag terms as one pattern: whole words, any case, hidden characters allowed."""

from __future__ import annotations

import re
from collections.abc import Sequence

# Format characters that render as nothing (soft hyphen, zero-width space and joiners,
# direction marks, word joiner, byte order mark): a model can be talked into writing them
# inside a term, which then reads the same and matches nothing.
HIDDEN = "\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff"
GAP = 3  # hidden characters allowed between two letters of a term
_HIDDEN = re.compile(f"[{HIDDEN}]")


def term_pattern(terms: Sequence[str]) -> re.Pattern[str]:
    """Any of the terms, as a whole word in any case, its letters maybe GAP hidden ones apart.

    Linear time: between two fixed letters only one bounded class repeats.
    """
    gap = f"[{HIDDEN}]{{0,{GAP}}}"
    words = sorted(terms, key=len, reverse=True)
    alternation = "|".join(gap.join(map(re.escape, word)) for word in words)
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)


def longest_span(terms: Sequence[str]) -> int:
    """The most characters a match of `term_pattern(terms)` can take."""
    return max(len(t) + GAP * (len(t) - 1) for t in terms)


def visible(text: str) -> str:
    """The text without its hidden characters (what a match reads as)."""
    return _HIDDEN.sub("", text)
