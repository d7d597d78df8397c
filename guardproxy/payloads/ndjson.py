"""Newline-delimited JSON (Ollama's streamed answers), split into lines with bounded memory.

`LineParser` gives each complete line as an `Event` whose data is the line, as `EventParser`
gives server-sent events, so a streamed answer's guard reads either. Lines end with LF, CRLF
or CR (a JSON text holds none of them raw); blank lines are skipped; a line longer than
`max_event` is an `SSEError`, never an unbounded buffer.

>>> parser = LineParser()
>>> [e.data for e in parser.feed(b'{"a": 1}\\n{"b"') + parser.feed(b': 2}\\r\\n')]
['{"a": 1}', '{"b": 2}']
"""

from __future__ import annotations

import re

from .sse import Event, SSEError

__all__ = ["NDJSON", "LineParser"]

NDJSON = b"application/x-ndjson"
_EOL = re.compile(rb"\r\n|\r|\n")


class LineParser:
    """Turns chunks of an NDJSON body into one event a line, one feed at a time."""

    __slots__ = ("_base", "_buf", "_cr", "boundary", "max_event", "scanned")

    def __init__(self, max_event: int = 1 << 20) -> None:
        self.max_event = max_event
        self._buf = bytearray()  # the unterminated last line, never more than max_event
        self._cr = False  # the last chunk ended in CR: a LF that starts the next one is its pair
        self._base = 0  # stream offset of _buf[0]
        self.boundary = 0  # stream offset just after the last complete line
        self.scanned = 0  # bytes searched for line ends: the cost, for tests

    def feed(self, chunk: bytes) -> list[Event]:
        """Lines completed by this chunk (SSEError when a line outgrows max_event)."""
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
            self._base += 1
            self.boundary = self._base
        self._cr = False
        start = len(self._buf)  # the buffer holds no line end: only new bytes need a search
        self._buf += chunk
        self.scanned += len(chunk)
        events: list[Event] = []
        buf, pos = self._buf, 0
        for end in _EOL.finditer(buf, start):
            line = bytes(buf[pos : end.start()])
            if len(line) > self.max_event:
                raise SSEError(f"a line is larger than {self.max_event} bytes", events)
            pos = end.end()
            self.boundary = self._base + pos
            if line.strip():
                events.append(Event(line.decode(errors="replace"), end=self.boundary))
        if pos:
            self._cr = buf[pos - 1 : pos] == b"\r" and pos == len(buf)
            del buf[:pos]  # once per chunk, so a chunk of many lines stays linear
            self._base += pos
        if len(buf) > self.max_event:
            raise SSEError(f"a line is larger than {self.max_event} bytes", events)
        return events
