"""LabelGuard: denied output labels (or words, for text) are suppressed, blocked or flagged."""

from __future__ import annotations

import re
from bisect import bisect_right

from guardproxy.guards.exchange import (
    Exchange,
    Reply,
    TooManyRows,
    check_rows,
    is_json_answer,
)
from guardproxy.payloads import Payload
from guardproxy.payloads.errors import MAX_ROWS, TooManyValues, over_limit
from guardproxy.payloads.escapes import json_strings, unescape, unescaped_positions, unmoved
from guardproxy.payloads.terms import TermNames, fold, folded_positions, term_pattern
from guardproxy.policy.models import LabelsSpec


class LabelGuard:
    """Applies the policy's deny list to the answer's labels or texts."""

    name = "labels"
    idle = frozenset({"request"})  # the chain skips this hook: it does nothing (but for chat)

    def __init__(self, spec: LabelsSpec, payload: Payload, max_rows: int = MAX_ROWS) -> None:
        if not spec.deny:
            raise ValueError("LabelGuard needs labels.deny")
        self.on_error = spec.on_error
        self._payload = payload
        self._max_rows = max_rows
        if payload.texts:
            self.idle = frozenset()  # a chat request's choices are counted
        self._action = spec.action
        self._block = spec.block
        self._deny = frozenset(label.casefold() for label in spec.deny)
        self._words = term_pattern(spec.deny)
        self._names = TermNames(spec.deny)  # a match's term, as listed

    async def on_request(self, ex: Exchange) -> None:
        """Chat: more choices asked for (`n`) than --max-rows is refused, as a batch is.

        Every choice of an answer is scanned, streamed or not; a stream keeps a text for
        each, which the row limit bounds.
        """
        try:
            doc = ex.request_json()
        except ValueError:
            return  # the model's to refuse; no answer of it can be read either
        n = doc.get("n", 1) if isinstance(doc, dict) else 1
        if type(n) is int:
            check_rows(n, self._max_rows)

    async def on_response(self, ex: Exchange) -> None:
        """Find denied labels; act on them only when there are some."""
        if not is_json_answer(ex):
            return
        doc = ex.response_json()
        try:
            rows = self._payload.labels(doc)
        except TooManyValues as exc:  # refused as a batch over the limit is, not passed
            raise TooManyRows(over_limit(exc.rows, min(exc.limit, self._max_rows))) from None
        if self._payload.texts:
            check_rows(len(rows), self._max_rows)
            arguments = self._payload.json_rows(doc)  # read as the client's parser reads them
            denied = self._denied_texts(rows, arguments)
        else:
            arguments, denied = frozenset(), self._denied_labels(rows)
        if not denied:
            return
        if self._action == "suppress":
            self._payload.set_labels(doc, self._suppressed(rows, arguments))
            ex.replace_response_json(doc)
            ex.flags.extend(f"suppressed:{label}" for label in sorted(set(denied)))
            ex.annotations["X-Guard-Labels"] = f"suppressed={len(denied)}"
        elif self._action == "block":
            ex.flags.extend(f"blocked:{label}" for label in sorted(set(denied)))
            details = {"action": "block", "denied": len(denied)}
            ex.reply = Reply(self._block.status, self._block.message, details=details)
        else:
            ex.flags.extend(f"label:{label}" for label in sorted(set(denied)))
            ex.annotations["X-Guard-Flag"] = f"labels={len(denied)}"

    def _denied_labels(self, rows: list[list[str]]) -> list[str]:
        deny = self._deny
        return [label.casefold() for row in rows for label in row if label.casefold() in deny]

    def _denied_texts(self, rows: list[list[str]], arguments: frozenset[int]) -> list[str]:
        find, names = self._words.findall, self._names
        found = [
            m
            for i, row in enumerate(rows)
            for text in row
            for m in find(fold(unescape(text) if i in arguments else text))
        ]
        return [(names.get(m) or m).casefold() for m in found]

    def _suppressed(self, rows: list[list[str]], arguments: frozenset[int]) -> list[list[str]]:
        if self._payload.texts:
            return [[self._masked(t, i in arguments) for t in row] for i, row in enumerate(rows)]
        deny = self._deny
        return [[label for label in row if label.casefold() not in deny] for row in rows]

    def _masked(self, text: str, arguments: bool = False) -> str:
        """The text with every character of each term found in its folded form masked.

        In a tool call's arguments terms are found with the JSON escapes read, and masked
        in the characters that wrote them, escapes whole, only inside the JSON's strings:
        arguments that were JSON stay JSON, as long as they were.
        """
        source, back = unescaped_positions(text) if arguments else (text, unmoved)
        spans = self._spans(source)
        if spans is None:  # a term only the whole text's folding shows
            if not arguments:
                return self._words.sub(self._mask, fold(text))  # the folded text, masked
            spans = [(0, len(source))]  # every string of the arguments
        if not spans:
            return text
        strings = json_strings(text) if arguments else None
        return _masked_spans(text, [(back(start), back(end)) for start, end in spans], strings)

    def _spans(self, text: str) -> list[tuple[int, int]] | None:
        """Where in `text` each term found lies: from its first letter to just before what
        follows its last, so hidden characters and marks between and over its letters go
        too; None when only the whole text's folding shows a term."""
        if text.isascii():  # lower-cased only: the spans are the original's
            return [m.span() for m in self._words.finditer(text.lower())]
        folded, origin = folded_positions(text)
        spans = [(origin(m.start()), origin(m.end())) for m in self._words.finditer(folded)]
        if not spans and self._words.search(fold(text)):
            return None
        return spans

    @staticmethod
    def _mask(match: re.Match[str]) -> str:
        return "*" * len(match.group(0))


def _masked_spans(
    text: str, spans: list[tuple[int, int]], strings: list[tuple[int, int]] | None = None
) -> str:
    """`text` with the characters of each span masked; with `strings` (where a JSON
    document's strings hold their characters), only those inside a string."""
    chars = list(text)
    for first, stop in spans:
        for start, end in [(first, stop)] if strings is None else _inside(strings, first, stop):
            chars[start:end] = "*" * (end - start)
    return "".join(chars)


def _inside(strings: list[tuple[int, int]], first: int, stop: int) -> list[tuple[int, int]]:
    """The parts of first..stop inside one of the (ordered) strings."""
    parts = []
    for i in range(max(0, bisect_right(strings, (first, first)) - 1), len(strings)):
        start, end = strings[i]
        if start >= stop:
            break
        if end > first:
            parts.append((max(start, first), min(end, stop)))
    return parts
