"""Logging for the process: the level and format chosen once, lines written off the event loop.

Records go through a bounded queue to a writer thread, so a slow log pipe never blocks the
event loop; when the queue is full a record is dropped and counted (`dropped()`, shown in
/status and as guardproxy_logs_dropped_total).
"""

from __future__ import annotations

import atexit
import copy
import logging
import queue
import sys
import threading
from collections.abc import Iterable
from logging.handlers import QueueHandler
from typing import TextIO

from guardproxy.logs.formatters import JsonFormatter, TextFormatter
from guardproxy.logs.masking import Secrets

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = ("text", "json")
QUEUE_SIZE = 10_000
STOP_WAIT = 5.0  # seconds the writer gets to finish at exit (a stuck pipe must not hang it)
Records = queue.Queue[logging.LogRecord | None]


def parse_level(text: str) -> int:
    """A level name in any case (debug, INFO, Warning...) into its number; else ValueError."""
    level = LEVELS.get(text.strip().lower())
    if level is None:
        raise ValueError(f"unknown log level {text!r}: expected one of {', '.join(LEVELS)}")
    return level


def parse_format(text: str) -> str:
    """text or json, in any case; else ValueError."""
    value = text.strip().lower()
    if value not in FORMATS:
        raise ValueError(f"unknown log format {text!r}: expected text or json")
    return value


class DroppingQueueHandler(QueueHandler):
    """Hands records to the writer thread; never waits: a full queue drops and counts."""

    def __init__(self, records: Records) -> None:
        super().__init__(records)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue the record, or count it as dropped."""
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """A copy with its message rendered now (its arguments may change later)."""
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
    """The thread that formats queued records and writes them out."""

    def __init__(self, records: Records, handler: logging.Handler) -> None:
        self.records = records
        self.handler = handler
        self.thread = threading.Thread(target=self._run, name="guardproxy-logs", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (record := self.records.get()) is not None:
            self.handler.handle(record)

    def stop(self) -> None:
        """Write what is queued, then end the thread (within STOP_WAIT seconds)."""
        try:
            self.records.put(None, timeout=STOP_WAIT)
        except queue.Full:
            return
        self.thread.join(STOP_WAIT)
        self.handler.flush()


class _Pipeline:
    """The installed queue handler and writer thread (one per process)."""

    handler: DroppingQueueHandler | None = None
    writer: LogWriter | None = None


_PIPELINE = _Pipeline()


def configure_logging(
    level: int,
    fmt: str = "text",
    secrets: Iterable[str | None] = (),
    stream: TextIO | None = None,
) -> None:
    """Send every log record to `stream` (stderr) as text or JSON lines, masking secrets.

    Replaces the root logger's handlers: this process writes its logs one way only.
    """
    stop_logging()
    output = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    masked = Secrets(secrets)
    output.setFormatter(JsonFormatter(masked) if fmt == "json" else TextFormatter(masked))
    records: Records = queue.Queue(QUEUE_SIZE)
    handler = DroppingQueueHandler(records)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    _PIPELINE.handler = handler
    _PIPELINE.writer = LogWriter(records, output)


def stop_logging() -> None:
    """Write what is queued, stop the writer thread and detach the handler (at exit too)."""
    writer, _PIPELINE.writer = _PIPELINE.writer, None
    handler = _PIPELINE.handler
    if handler is not None:
        logging.getLogger().removeHandler(handler)
    if writer is not None:
        writer.stop()


def dropped() -> int:
    """Log records dropped so far because the writer fell behind."""
    handler = _PIPELINE.handler
    return handler.dropped if handler is not None else 0


atexit.register(stop_logging)
