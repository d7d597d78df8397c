"""Server-sent events, parsed incrementally with bounded memory (the WHATWG event-stream rules).

Bytes arrive in any chunking; each complete event comes out once. Lines end with CRLF, LF or
CR; `:` starts a comment; `data` lines join with newlines; an event with no data is not
dispatched. Every byte is looked at a bounded number of times, and an event (or an
unterminated line) longer than `max_event` is an `SSEError`, never an unbounded buffer.

>>> parser = EventParser()
>>> parser.feed(b'data: {"a"') + parser.feed(b': 1}\\n\\nda')
[Event(data='{"a": 1}', event='message', id=None)]
>>> parser.feed(b'ta: [DONE]\\r\\n\\r\\n')
[Event(data='[DONE]', event='message', id=None)]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["DONE", "Event", "EventParser", "SSEError"]

DONE = "[DONE]"
_EOL = re.compile(rb"\r\n|\r|\n")  # literal alternation: one pass, linear
_BOM = b"\xef\xbb\xbf"


class SSEError(ValueError):
    """An event stream that breaks a limit (an event too large) or is not what was expected.

    `events` holds the events the chunk completed before the one that broke the limit.
    """

    events: list[Event]

    def __init__(self, message: str, events: list[Event] | None = None) -> None:
        super().__init__(message)
        self.events = events or []


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event: its data (lines joined by newlines), type and last event id.

    `end` is the stream offset just after the blank line that ended it (not compared).
    """

    data: str
    event: str = "message"
    id: str | None = None
    end: int = field(default=0, repr=False, compare=False)


class EventParser:
    """Turns chunks of a text/event-stream body into events, one feed at a time."""

    __slots__ = (
        "_base",
        "_buf",
        "_cr",
        "_data",
        "_event",
        "_id",
        "_lines_of_data",
        "_size",
        "_started",
        "boundary",
        "max_event",
        "scanned",
    )

    def __init__(self, max_event: int = 1 << 20) -> None:
        self.max_event = max_event
        self._buf = bytearray()  # the unterminated last line, never more than max_event
        self._cr = False  # the last chunk ended in CR: a LF that starts the next one is its pair
        self._started = False
        # The data lines joined as they come, as bytes: a list of a million short lines held
        # fifty bytes of objects for each byte counted against max_event.
        self._data = bytearray()
        self._lines_of_data = 0
        self._size = 0  # bytes of the event being built
        self._event = ""
        self._id: str | None = None
        self.scanned = 0  # bytes searched for line ends: the cost, for tests
        self.boundary = 0  # stream offset just after the last blank line (an event's end)
        self._base = 0  # stream offset of _buf[0]

    def feed(self, chunk: bytes) -> list[Event]:
        """Events completed by this chunk (SSEError when an event outgrows max_event)."""
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
            self._base += 1
        self._cr = False
        start = len(self._buf)  # the buffer holds no line end: only new bytes need a search
        self._buf += chunk
        if not self._started:
            if len(self._buf) < 3 and _BOM.startswith(self._buf):
                return []  # perhaps a byte-order mark, still arriving
            self._started, start = True, 0
            if self._buf.startswith(_BOM):
                del self._buf[:3]
                self._base += 3
        self.scanned += len(self._buf) - start
        events: list[Event] = []
        self._lines(start, events)
        if self._size + len(self._buf) > self.max_event:
            raise SSEError(f"an event is larger than {self.max_event} bytes", events)
        return events

    def close(self) -> list[Event]:
        """End of stream: an event without its blank line is dropped, as the standard says."""
        self._buf.clear()
        self._reset()
        return []

    def _lines(self, start: int, events: list[Event]) -> None:
        """Each complete line of the buffer, the events it completes appended to `events`."""
        pos = 0
        buf = self._buf
        try:
            for end in _EOL.finditer(buf, start):
                line = bytes(buf[pos : end.start()])
                pos = end.end()
                if not line:
                    self.boundary = self._base + pos
                event = self._line(line)
                if event is not None:
                    events.append(event)
        except SSEError as exc:
            raise SSEError(str(exc), events) from None
        if pos:
            self._cr = buf[pos - 1 : pos] == b"\r" and pos == len(buf)
            del buf[:pos]  # once per chunk, so a chunk of many lines stays linear
            self._base += pos

    def _line(self, line: bytes) -> Event | None:
        if not line:
            return self._dispatch()
        self._size += len(line) + 1
        if self._size > self.max_event:
            raise SSEError(f"an event is larger than {self.max_event} bytes")
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        self._field(name, value)
        return None

    def _field(self, name: bytes, value: bytes) -> None:
        if name == b"data":
            if self._lines_of_data:
                self._data += b"\n"
            self._data += value
            self._lines_of_data += 1
        elif name == b"event":
            self._event = value.decode(errors="replace")
        elif name == b"id" and b"\0" not in value:
            self._id = value.decode(errors="replace")
        # `retry` and unknown fields change nothing a proxy forwards

    def _dispatch(self) -> Event | None:
        data, lines, event = self._data, self._lines_of_data, self._event
        self._reset()
        if not lines:
            return None
        text = data.decode(errors="replace")
        return Event(text, event or "message", self._id, self.boundary)

    def _reset(self) -> None:
        self._data = bytearray()
        self._lines_of_data = 0
        self._event = ""
        self._size = 0
