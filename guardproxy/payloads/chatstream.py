"""A streamed OpenAI chat answer (`stream: true`), guarded as it passes.

`ChatStreamGuard.feed(chunk)` parses the chunk's server-sent events, appends each choice's
`delta.content` (and `refusal`, and each tool call's arguments, their JSON escapes read as
the client's parser reads them, an escape cut between chunks read whole) to that text and
scans only what is new: the text already scanned is kept as a tail of the longest term plus
one character, so a term split across chunks is found and the whole stream costs linear
time. Terms match as whole words, case-insensitively, as the label guard matches them in a
complete answer. A denied term that ends exactly where its text so far ends is held open:
its event (and those after it) is not released until what follows shows whether a letter
goes on ("ape", then "x"), the choice finishes, the stream ends, or more than `max_event`
bytes wait behind it (then it counts).
After each `feed`, the caller forwards `release()` (the bytes of the events now complete);
on `deny` that is only the events before the denied one, and the caller sends
`error_events(...)` after it and closes the stream, so the error starts at an event
boundary. At the upstream's end it forwards `rest()`. `answer()` is the accumulated text
for the sample.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import orjson

from .chatevents import CONTENT, JSON_TEXTS, Part, documents, event_texts
from .errors import MAX_ROWS
from .escapes import Unescaper
from .ndjson import LineParser
from .sse import DONE, Event, EventParser, SSEError
from .terms import UNSPACED, WORD, TermNames, fold, longest_span, term_key, term_pattern

__all__ = ["PASS", "ChatStreamGuard", "Scan", "TermScanner", "error_events"]

Action = Literal["pass", "deny", "flag"]


@dataclass(frozen=True, slots=True)
class Scan:
    """What to do with a chunk: pass, deny (end the stream) or flag (forward, mark)."""

    action: Action
    term: str | None = None  # the policy's term that matched
    choice: int | None = None
    at: int = field(default=0, compare=False)  # stream offset of the event the term ended in


PASS = Scan("pass")
_RANK = {"pass": 0, "flag": 1, "deny": 2}


def _worse(a: Scan, b: Scan) -> Scan:
    """The scan that matters more: deny over flag over pass; the earlier one on a tie."""
    rank_a, rank_b = _RANK[a.action], _RANK[b.action]
    return b if rank_b > rank_a or (rank_b == rank_a and b.at < a.at) else a


def _is_deny(scan: Scan) -> bool:
    return scan.action == "deny"


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

    def scan(
        self,
        tail: str,
        text: str,
        open_terms: Sequence[Scan] = (),
        choice: int | None = None,
        at: int = 0,
    ) -> tuple[str, list[Scan], list[Scan]]:
        """The new tail, the terms matched in `text` (each flag once, up to the first deny),
        and the terms left open.

        A term that ends where `text` ends is left open: it is a whole word only if what
        follows does not go on with a letter or digit. The next call settles the open terms
        given back to it: they count when its text starts otherwise, and are dropped when
        it goes on; a text that folds to nothing leaves them open.
        Once per term, not per match: text that repeats a flagged term would otherwise keep
        an object per match (a model can be asked to say a word a million times).
        """
        folded = fold(text)
        if not folded:
            return tail, [], list(open_terms)
        # What follows settles the open terms; a deny among them (put last) ends the stream.
        found: list[Scan] = []
        if open_terms and not WORD.match(folded):
            found = sorted(open_terms, key=_is_deny)
            if found[-1].action == "deny":
                return tail, found, []
        window = tail + folded
        old, end = len(tail), len(window)
        pos = max(0, old + 1 - self._longest)  # a match ending in `text` starts here or later
        self.scanned += end - pos
        left: list[Scan] = []
        flagged = {s.term for s in found} if found else set()
        while (match := self._pattern.search(window, pos)) is not None:
            if match.end() > old:
                term = self._names.get(match.group(0)) or match.group(0)
                scan = Scan("deny" if term in self._deny else "flag", term, choice, at)
                if match.end() == end and not UNSPACED.match(window[-1]):
                    left.append(scan)
                elif scan.action == "deny":
                    found.append(scan)
                    return window[-self._keep :], found, []
                elif term not in flagged:
                    flagged.add(term)
                    found.append(scan)
            pos = match.start() + 1  # overlapping terms: look again just after this start
        return window[-self._keep :], found, left


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
        anthropic: bool = False,
        ndjson: bool = False,
    ) -> None:
        self.scanner = scanner
        # An event that is not JSON, or not a chat chunk, passes unread and the events after
        # it are still read (fail_open); without it, feed raises SSEError (fail_closed).
        self.skip_unreadable = skip_unreadable
        self.unread: list[str] = []  # why events passed unread, the first 16
        self.unread_events = 0
        self.ndjson = ndjson  # Ollama's lines of JSON, not server-sent events
        self.parser = LineParser(max_event) if ndjson else EventParser(max_event)
        self.max_answer = max_answer
        self.max_choices = max_choices
        self.done = False  # `data: [DONE]` seen (or the end a Responses or Messages stream names)
        self.anthropic = anthropic  # an Anthropic Messages stream: its error event is named
        self.truncated = False  # the answer kept for the sample stopped at max_answer
        self.flags: set[str] = set()  # the flagged terms the answer said
        self._held = bytearray()  # bytes fed, not released: a partial event, those a term holds
        self._released = 0  # stream offset of _held[0]
        self._releasable = 0  # stream offset up to which events may be released
        self._tails: dict[Part, str] = {}
        # Terms ending where their text ends, undecided, by choice then part: a choice's end
        # settles its own. A heap of (offset, part) of the denied ones bounds what may go;
        # an entry whose term was settled since is dropped when it reaches the top.
        self._open: dict[int, dict[str, list[Scan]]] = {}
        self._holds: list[tuple[int, Part]] = []
        self.visited = 0  # open terms looked at to settle or hold: the cost, for tests
        self._event_at = 0  # stream offset of the event being scanned
        self._parts: dict[Part, _Text] = {}
        self._unescapers: dict[Part, Unescaper] = {}  # a tool call's arguments are JSON
        self._size = 0

    def feed(self, chunk: bytes) -> Scan:
        """Scan a chunk of the upstream's body (SSEError on a malformed or oversized event)."""
        self._held += chunk
        result = PASS
        start = self._releasable
        try:
            events, broken = self.parser.feed(chunk), None
        except SSEError as exc:  # the events before the one too large are still read
            events, broken = exc.events, exc
        for event in events:
            self._event_at = start
            try:
                scan = self.scan_event(event)
            except SSEError as exc:
                if not self.skip_unreadable:
                    self._releasable = self._hold(start)  # the events before it may go
                    raise
                self._skipped(str(exc))
                scan = PASS
            if scan.action == "deny":  # the events before it may still go
                self._releasable = self._hold(scan.at)
                return scan
            result, start = _worse(result, scan), event.end
        if broken is not None:
            self._releasable = self._hold(start)
            raise broken
        self._releasable = self.parser.boundary
        if self._open:
            self._releasable = self._hold(self._releasable)
            if self.parser.boundary - self._releasable > self.parser.max_event:
                return self.settle()  # held long enough: the open terms count
        return result

    def end(self) -> Scan:
        """At the upstream's end: the event it left without its blank line, scanned, then
        every open term settled.

        Clients differ on that event (the standard drops it; a client reading lines shows
        it), so it is read as if ended, and on a deny it is not forwarded (`release` never
        gives it).
        """
        result = PASS
        self._event_at = self.parser.boundary
        for event in self.parser.feed(b"\n\n"):
            try:
                scan = self.scan_event(event)
            except SSEError as exc:
                if not self.skip_unreadable:
                    raise
                self._skipped(str(exc))
                continue
            if scan.action == "deny":
                self._cut(scan.at)
                return scan
            result = _worse(result, scan)
        return _worse(result, self.settle())

    def settle(self, choices: Iterable[int] | None = None) -> Scan:
        """The open terms of these choices (None: all) count: nothing follows them.

        On a deny, only the events before the one its term ended in may be released.
        """
        result = PASS
        chosen = list(self._open) if choices is None else set(choices) & self._open.keys()
        for choice in chosen:
            for scans in self._open.pop(choice).values():
                self.visited += len(scans)
                result = _worse(result, self._counted(scans))
        if result.action == "deny":
            self._cut(result.at)
        return result

    def _cut(self, at: int) -> None:
        """Only the events before `at` (and before any term still held) may be released."""
        self._releasable = self._hold(min(at, self._releasable))

    def _hold(self, offset: int) -> int:
        """How far events may be released: `offset`, or before the first open denied term."""
        holds = self._holds
        while holds and not self._still_open(*holds[0]):
            heapq.heappop(holds)
        return min(offset, holds[0][0]) if holds else offset

    def _still_open(self, at: int, part: Part) -> bool:
        scans = self._open.get(part[0], {}).get(part[1], ())
        self.visited += len(scans)
        return any(s.at == at and s.action == "deny" for s in scans)

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
        """Scan one event: every choice's new text (deny beats flag); settle what it ends."""
        if event.data.strip() == DONE:
            self.done = True
            return self.settle()
        result = PASS
        for doc in documents(event.data):
            texts, finished, ended, anthropic = event_texts(doc, self.max_choices)
            self.anthropic = self.anthropic or anthropic
            for part, text in texts:  # every choice, so each answer stays whole
                result = _worse(result, self._scan_text(part, text))
            if ended:
                self.done = True
                result = _worse(result, self.settle())
            elif finished and self._open:
                result = _worse(result, self.settle(finished))
        return result

    def _scan_text(self, part: Part, text: str) -> Scan:
        self._keep_text(part, text)
        if self.scanner is None:
            return PASS
        if part[1].startswith(JSON_TEXTS):  # scanned as the client's parser reads them
            unescaper = self._unescapers.get(part)
            if unescaper is None:
                unescaper = self._unescapers[part] = Unescaper()
            text = unescaper.feed(text)
        parts = self._open.get(part[0])
        opened = parts.pop(part[1], ()) if parts is not None else ()
        tail, found, left = self.scanner.scan(
            self._tails.get(part, ""), text, opened, part[0], self._event_at
        )
        self._tails[part] = tail
        if left:
            self._open.setdefault(part[0], {})[part[1]] = left
            for scan in left:
                if scan.action == "deny":
                    heapq.heappush(self._holds, (scan.at, part))
        elif parts is not None and not parts:
            del self._open[part[0]]
        return self._counted(found)

    def _counted(self, found: list[Scan]) -> Scan:
        """Flags kept; the scan that matters: the deny that ends the list, else the first."""
        if not found:
            return PASS
        self.flags.update(s.term for s in found if s.action == "flag" and s.term is not None)
        return found[-1] if found[-1].action == "deny" else found[0]

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

    def error(self, message: str, code: str = "content_filter") -> bytes:
        """The end of this stream, refused: `error_events` in the stream's own form."""
        return error_events(message, code, self.anthropic, self.ndjson)

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


def error_events(
    message: str, code: str = "content_filter", anthropic: bool = False, ndjson: bool = False
) -> bytes:
    """The end of a refused stream: an OpenAI-style JSON error event, then `data: [DONE]`;
    for an Anthropic Messages stream, an event named `error` (its clients skip others); for
    an Ollama stream, a line whose `error` is the message (its clients raise it)."""
    if ndjson:
        return orjson.dumps({"error": message}) + b"\n"
    error = {"message": message, "type": "guardproxy", "code": code}
    if anthropic:
        return b"event: error\ndata: " + orjson.dumps({"type": "error", "error": error}) + b"\n\n"
    return b"data: " + orjson.dumps({"error": error}) + b"\n\ndata: " + DONE.encode() + b"\n\n"
