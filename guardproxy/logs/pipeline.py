"""Records handed from the event loop to a writer thread: no lock, no wait, drops counted.

The caller appends to a bounded deque (atomic under the GIL, no condition variable to
signal); the writer wakes every `interval` seconds and writes whatever is there. A full
buffer drops the record and counts it, so a stuck log pipe never blocks a request.
"""

from __future__ import annotations

import copy
import logging
import sys
import threading
from collections import deque
from typing import TextIO

BUFFER_SIZE = 10_000
INTERVAL = 0.05  # seconds between writes: how late a line may appear
STOP_WAIT = 5.0  # seconds the writer gets to finish at exit (a stuck pipe must not hang it)


class RecordBuffer(logging.Handler):
    """The root logger's handler: keeps records for the writer, up to `limit` waiting."""

    def __init__(self, limit: int = BUFFER_SIZE) -> None:
        super().__init__()
        self.limit = limit
        self.records: deque[logging.LogRecord] = deque()
        self.dropped = 0

    def handle(self, record: logging.LogRecord) -> bool:
        """Keep the record (no handler lock: a deque append is atomic), or count the drop."""
        if len(self.records) >= self.limit:
            self.dropped += 1
            return False
        self.records.append(prepare(record))
        return True

    def emit(self, record: logging.LogRecord) -> None:
        """Records arrive through handle()."""
        self.handle(record)


def prepare(record: logging.LogRecord) -> logging.LogRecord:
    """The record with its message fixed now: its arguments may change before it is written."""
    if not record.args and not record.exc_info:
        return record
    prepared = copy.copy(record)
    prepared.msg, prepared.args = record.getMessage(), None
    if record.exc_info:
        prepared.exc_text = logging.Formatter().formatException(record.exc_info)
        prepared.exc_info = None
    return prepared


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of writing (as logging.lastResort does)."""

    @property
    def stream(self) -> TextIO:
        """The current standard error."""
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class LogWriter:
    """The thread that formats buffered records and writes them out."""

    def __init__(
        self, buffer: RecordBuffer, output: logging.Handler, interval: float = INTERVAL
    ) -> None:
        self.buffer = buffer
        self.output = output
        self.interval = interval
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="guardproxy-logs", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            self._write()
        self._write()

    def _write(self) -> None:
        records = self.buffer.records
        while records:
            self.output.handle(records.popleft())
        self.output.flush()

    def stop(self) -> None:
        """Write what is buffered, then end the thread (within STOP_WAIT seconds)."""
        self.stopping.set()
        self.thread.join(STOP_WAIT)
