"""LabelGuard: denied output labels (or words, for text) are suppressed, blocked or flagged."""

from __future__ import annotations

import re
from collections.abc import Callable

from guardproxy.guards.exchange import Exchange, Reply, check_rows, is_json_answer
from guardproxy.payloads import Payload
from guardproxy.payloads.errors import MAX_ROWS
from guardproxy.payloads.terms import fold, folded_positions, term_key, term_pattern
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
        self._names = {term_key(t): t.casefold() for t in spec.deny}  # a match's, as listed

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
        rows = self._payload.labels(doc)
        denied = self._denied_texts(rows) if self._payload.texts else self._denied_labels(rows)
        if not denied:
            return
        if self._action == "suppress":
            self._payload.set_labels(doc, self._suppressed(rows))
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

    def _denied_texts(self, rows: list[list[str]]) -> list[str]:
        find, names = self._words.findall, self._names
        keys = [term_key(m) for row in rows for text in row for m in find(fold(text))]
        return [names.get(key, key) for key in keys]

    def _suppressed(self, rows: list[list[str]]) -> list[list[str]]:
        if self._payload.texts:
            return [[self._masked(text) for text in row] for row in rows]
        deny = self._deny
        return [[label for label in row if label.casefold() not in deny] for row in rows]

    def _masked(self, text: str) -> str:
        """The text with every character of each term found in its folded form masked."""
        if text.isascii():  # lower-cased only: the spans are the original's
            spans = [m.span() for m in self._words.finditer(text.lower())]
            return _masked_spans(text, spans, _same)
        folded, origin = folded_positions(text)
        spans = [m.span() for m in self._words.finditer(folded)]
        if not spans:  # a term only the whole text's folding shows: the folded text masked
            return self._words.sub(self._mask, fold(text))
        return _masked_spans(text, spans, origin)

    @staticmethod
    def _mask(match: re.Match[str]) -> str:
        return "*" * len(match.group(0))


def _masked_spans(text: str, spans: list[tuple[int, int]], origin: Callable[[int], int]) -> str:
    """`text` with the characters behind each span of its folded form masked: from a term's
    first letter to just before what follows its last one, so the hidden characters and
    marks between and over its letters go too."""
    if not spans:
        return text
    chars = list(text)
    for start, end in spans:
        first, stop = origin(start), origin(end)
        chars[first:stop] = "*" * (stop - first)
    return "".join(chars)


def _same(index: int) -> int:
    return index
