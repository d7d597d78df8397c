"""A streamed OpenAI chat answer (`stream: true`), guarded as it passes.

`ChatStreamGuard.feed(chunk)` parses the chunk's server-sent events, appends each choice's
`delta.content` (and `refusal`, and each tool call's arguments, their JSON escapes read as
the client's parser reads them, an escape cut between chunks read whole) to that text and
scans only what is new: the text already scanned is kept as a tail of the longest term plus
one character, so a term split across chunks is found and the whole stream costs linear
time. Terms match as whole words, case-insensitively, as the label guard matches them in a
complete answer. A term that ends exactly where the text so far ends counts at once: waiting
for the next character would let it reach the client.
After each `feed`, the caller forwards `release()` (the bytes of the events now complete);
on `deny` that is only the events before the denied one, and the caller sends
`error_events(...)` after it and closes the stream, so the error starts at an event
boundary. At the upstream's end it forwards `rest()`. `answer()` is the accumulated text
for the sample.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

import orjson

from .errors import MAX_ROWS
from .escapes import Unescaper
from .sse import DONE, Event, EventParser, SSEError
from .terms import TermNames, fold, longest_span, term_key, term_pattern

__all__ = ["PASS", "ChatStreamGuard", "Scan", "TermScanner", "error_events"]

Action = Literal["pass", "deny", "flag"]
Part = tuple[int, str]  # a choice's index and which of its texts: content, refusal, a tool call
CONTENT = "content"
MAX_TOOL_CALLS = 128  # per choice: each keeps a text and a tail of its own
# What a delta says as text: its content, a refusal, a reasoning model's reasoning (vLLM).
_DELTA_TEXTS = (CONTENT, "refusal", "reasoning_content", "reasoning")


@dataclass(frozen=True, slots=True)
class Scan:
    """What to do with a chunk: pass, deny (end the stream) or flag (forward, mark)."""

    action: Action
    term: str | None = None  # the policy's term that matched
    choice: int | None = None


PASS = Scan("pass")
_RANK = {"pass": 0, "flag": 1, "deny": 2}


def _worse(a: Scan, b: Scan) -> Scan:
    """The scan that matters more: deny over flag over pass; the earlier one on a tie."""
    return b if _RANK[b.action] > _RANK[a.action] else a


class TermScanner:
    """Whole-word, case-insensitive term search over text arriving in pieces."""

    __slots__ = ("_deny", "_keep", "_longest", "_names", "_pattern", "scanned")

    def __init__(self, deny: Iterable[str], flag: Iterable[str] = ()) -> None:
        deny, flag = [t for t in deny if t], [t for t in flag if t]
        if not deny and not flag:
            raise ValueError("TermScanner needs at least one deny or flag term")
        # One spelling a term: a deny spelling of a flagged term is denied.
        words = list({term_key(t): t for t in (*flag, *deny)}.values())
        self._names = TermNames(words)
        self._deny = frozenset(deny)
        self._pattern = term_pattern(words)
        self._longest = longest_span(words)
        self._keep = self._longest + 1  # the longest match and the character before it
        self.scanned = 0  # characters searched, all texts together: the cost, for tests

    def scan(self, tail: str, text: str) -> tuple[str, list[Scan]]:
        """The new tail, and the terms matched in `text`: each flag once, up to the first deny.

        Once per term, not per match: text that repeats a flagged term would otherwise keep
        an object per match (a model can be asked to say a word a million times).
        """
        window = tail + fold(text)
        old = len(tail)
        pos = max(0, old + 1 - self._longest)  # a match ending in `text` starts here or later
        self.scanned += len(window) - pos
        found: list[Scan] = []
        flagged: set[str] = set()
        while (match := self._pattern.search(window, pos)) is not None:
            if match.end() > old:
                term = self._names.get(match.group(0)) or match.group(0)
                if term in self._deny:
                    found.append(Scan("deny", term))
                    break
                if term not in flagged:
                    flagged.add(term)
                    found.append(Scan("flag", term))
            pos = match.start() + 1  # overlapping terms: look again just after this start
        return window[-self._keep :], found


class ChatStreamGuard:
    """Parses and scans one streamed chat answer; bounded by max_event and max_answer.

    Without a scanner it only keeps the answer's text (for the sample) and releases events.
    """

    def __init__(
        self,
        scanner: TermScanner | None,
        *,
        max_event: int = 1 << 20,
        max_answer: int = 1 << 20,
        max_choices: int = MAX_ROWS,
        skip_unreadable: bool = False,
    ) -> None:
        self.scanner = scanner
        # An event that is not JSON, or not a chat chunk, passes unread and the events after
        # it are still read (fail_open); without it, feed raises SSEError (fail_closed).
        self.skip_unreadable = skip_unreadable
        self.unread: list[str] = []  # why events passed unread, the first 16
        self.unread_events = 0
        self.parser = EventParser(max_event)
        self.max_answer = max_answer
        self.max_choices = max_choices
        self.done = False  # `data: [DONE]` seen
        self.truncated = False  # the answer kept for the sample stopped at max_answer
        self.flags: set[str] = set()  # the flagged terms the answer said
        self._held = bytearray()  # bytes fed but not released: at most one partial event
        self._released = 0  # stream offset of _held[0]
        self._releasable = 0  # stream offset up to which events may be released
        self._tails: dict[Part, str] = {}
        self._parts: dict[Part, _Text] = {}
        self._unescapers: dict[Part, Unescaper] = {}  # a tool call's arguments are JSON
        self._size = 0

    def feed(self, chunk: bytes) -> Scan:
        """Scan a chunk of the upstream's body (SSEError on a malformed or oversized event)."""
        self._held += chunk
        result = PASS
        start = self._releasable
        for event in self.parser.feed(chunk):
            try:
                scan = self.scan_event(event)
            except SSEError as exc:
                if not self.skip_unreadable:
                    self._releasable = start  # the events before an unreadable one may go
                    raise
                self._skipped(str(exc))
                scan = PASS
            if scan.action == "deny":  # the events before it may still go
                self._releasable = start
                return scan
            result, start = _worse(result, scan), event.end
        self._releasable = self.parser.boundary
        return result

    def end(self) -> Scan:
        """At the upstream's end: the event it left without its blank line, scanned.

        Clients differ on it (the standard drops it; a client reading lines shows it), so it
        is read as if ended, and on a deny it is not forwarded (`release` never gives it).
        """
        result = PASS
        for event in self.parser.feed(b"\n\n"):
            try:
                scan = self.scan_event(event)
            except SSEError as exc:
                if not self.skip_unreadable:
                    raise
                self._skipped(str(exc))
                continue
            if scan.action == "deny":
                return scan
            result = _worse(result, scan)
        return result

    def _skipped(self, why: str) -> None:
        if len(self.unread) < 16:
            self.unread.append(why)
        self.unread_events += 1

    def release(self) -> bytes:
        """The bytes of the complete events fed and not yet released (before a denied one)."""
        count = self._releasable - self._released
        out = bytes(self._held[:count])
        del self._held[:count]
        self._released += count
        return out

    def rest(self) -> bytes:
        """At the end of the upstream's body: whatever followed the last complete event."""
        out = bytes(self._held)
        self._released += len(out)
        self._held.clear()
        return out

    def scan_event(self, event: Event) -> Scan:
        """Scan one event: every choice's new content (deny beats flag)."""
        if event.data.strip() == DONE:
            self.done = True
            return PASS
        result = PASS
        for doc in _documents(event.data):
            for part, text in self._deltas(doc):  # every choice, so each answer stays whole
                result = _worse(result, self._scan_text(part, text))
        return result

    def _deltas(self, doc: Any) -> list[tuple[Part, str]]:
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list):
            return []  # an error or usage event: no text
        out = []
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta, text = choice.get("delta"), choice.get("text")  # chat; completions
            texts = _delta_texts(delta) if isinstance(delta, dict) else []
            if _is_text(text):
                texts.append((CONTENT, text))
            if texts:
                index = _index(choice.get("index", 0), self.max_choices, "choice")
                out += [((index, part), text) for part, text in texts]
        return out

    def _scan_text(self, part: Part, text: str) -> Scan:
        self._keep_text(part, text)
        if self.scanner is None:
            return PASS
        if part[1] not in _DELTA_TEXTS:  # arguments: scanned as the client's parser reads them
            unescaper = self._unescapers.get(part)
            if unescaper is None:
                unescaper = self._unescapers[part] = Unescaper()
            text = unescaper.feed(text)
        tail, found = self.scanner.scan(self._tails.get(part, ""), text)
        self._tails[part] = tail
        if not found:
            return PASS
        self.flags.update(s.term for s in found if s.action == "flag" and s.term is not None)
        last = found[-1] if found[-1].action == "deny" else found[0]
        return Scan(last.action, last.term, part[0])

    def _keep_text(self, part: Part, text: str) -> None:
        room = self.max_answer - self._size
        if len(text) > room:
            self.truncated = True
            text = text[:room]
        if text:
            parts = self._parts.get(part)
            if parts is None:
                parts = self._parts[part] = _Text()
            parts.add(text)
            self._size += len(text)

    def answer(self, index: int = 0) -> str:
        """The content of one choice so far (cut at max_answer characters for all texts)."""
        parts = self._parts.get((index, CONTENT))
        return parts.text() if parts is not None else ""

    def answers(self) -> dict[int, str]:
        """Every choice's content so far, by choice index."""
        return {
            i: self.answer(i) for i in sorted({i for i, part in self._parts if part == CONTENT})
        }

    def texts(self) -> dict[int, dict[str, str]]:
        """Every text of every choice so far: content, refusal, each tool call's arguments."""
        out: dict[int, dict[str, str]] = {}
        for (index, part), parts in sorted(self._parts.items()):
            out.setdefault(index, {})[part] = parts.text()
        return out


def _documents(data: str) -> list[Any]:
    """An event's JSON: orjson's reading, else Python's (which takes NaN, 1e400 and lone
    surrogates, as a client may), else each data line's own (as a client reading lines
    does); SSEError when none is JSON."""
    try:
        return [orjson.loads(data)]
    except orjson.JSONDecodeError:
        pass
    docs = _lenient([data]) or ("\n" in data and _lenient(data.split("\n"))) or None
    if docs is None:
        raise SSEError("a chat stream event is not JSON")
    return docs


def _lenient(texts: list[str]) -> list[Any]:
    out = []
    for text in texts:
        try:
            out.append(json.loads(text))
        except (ValueError, RecursionError):
            continue
    return out


def _index(value: Any, limit: int, what: str) -> int:
    """A choice's or tool call's index as a client reads it: 0, 0.0 and "0" alike."""
    whole = type(value) is float and value.is_integer()
    if whole or (type(value) is str and value.isascii() and value.isdigit() and len(value) < 8):
        value = int(value)
    if type(value) is not int or not 0 <= value < limit:
        raise SSEError(f"{what} index {repr(value)[:20]} outside 0..{limit - 1}")
    return value


def _delta_texts(delta: dict[str, Any]) -> list[tuple[str, str]]:
    """The texts of a delta a client reads: content, refusal, reasoning, tool-call arguments.

    A tool call's arguments arrive in pieces keyed by the call's index, scanned as one text.
    """
    out = [(key, text) for key in _DELTA_TEXTS if _is_text(text := delta.get(key))]
    calls = delta.get("tool_calls")
    for position, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if _is_text(arguments):
            index = _index(call.get("index", position), MAX_TOOL_CALLS, "tool call")
            out.append((f"tool_calls[{index}]", arguments))
    legacy = delta.get("function_call")
    arguments = legacy.get("arguments") if isinstance(legacy, dict) else None
    if _is_text(arguments):
        out.append(("function_call", arguments))
    return out


def _is_text(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value)


class _Text:
    """A choice's text as it streams: pieces joined in runs, not kept one object a token.

    A token apiece cost ~60 bytes a character; joined every RUN pieces, a fraction of one.
    """

    __slots__ = ("pieces", "runs")
    RUN = 256

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.pieces: list[str] = []

    def add(self, text: str) -> None:
        """One more piece of the text."""
        pieces = self.pieces
        pieces.append(text)
        if len(pieces) >= self.RUN:
            self.runs.append("".join(pieces))
            pieces.clear()

    def text(self) -> str:
        """The whole text so far."""
        return "".join(self.runs) + "".join(self.pieces)


def error_events(message: str, code: str = "content_filter") -> bytes:
    """The end of a refused stream: an OpenAI-style JSON error event, then `data: [DONE]`."""
    error = {"error": {"message": message, "type": "guardproxy", "code": code}}
    return b"data: " + orjson.dumps(error) + b"\n\ndata: " + DONE.encode() + b"\n\n"
