"""Logging for the process: the level and format chosen once, lines written off the event loop.

Records go through a bounded buffer to a writer thread (logs.pipeline), so a slow log pipe
never blocks the event loop; when the buffer is full a record is dropped and counted
(`dropped()`, shown in /status and as guardproxy_logs_dropped_total).
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterable
from typing import TextIO

from guardproxy.logs.formatters import JsonFormatter, TextFormatter
from guardproxy.logs.pipeline import BUFFER_SIZE, LogWriter, RecordBuffer, StderrHandler
from guardproxy.masking import Masker

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = ("text", "json")


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


class _Pipeline:
    """The installed buffer and writer thread (one per process)."""

    buffer: RecordBuffer | None = None
    writer: LogWriter | None = None


_PIPELINE = _Pipeline()


def configure_logging(
    level: int,
    fmt: str = "text",
    secrets: Iterable[str | None] = (),
    stream: TextIO | None = None,
    buffer_size: int = BUFFER_SIZE,
) -> None:
    """Send every log record to `stream` (stderr) as text or JSON lines, masking secrets.

    Replaces the root logger's handlers: this process writes its logs one way only.
    """
    stop_logging()
    output = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    masked = Masker(secrets)
    output.setFormatter(JsonFormatter(masked) if fmt == "json" else TextFormatter(masked))
    buffer = RecordBuffer(buffer_size)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(buffer)
    root.setLevel(level)
    _PIPELINE.buffer = buffer
    _PIPELINE.writer = LogWriter(buffer, output)


def stop_logging() -> None:
    """Write what is queued, stop the writer thread and detach the handler (at exit too)."""
    writer, _PIPELINE.writer = _PIPELINE.writer, None
    if _PIPELINE.buffer is not None:
        logging.getLogger().removeHandler(_PIPELINE.buffer)
    if writer is not None:
        writer.stop()


def dropped() -> int:
    """Log records dropped so far because the writer fell behind."""
    buffer = _PIPELINE.buffer
    return buffer.dropped if buffer is not None else 0


def _restart_in_child() -> None:
    """A forked worker gets a writer thread of its own (fork copies no threads).

    Records still buffered belong to the parent, which writes them.
    """
    buffer, writer = _PIPELINE.buffer, _PIPELINE.writer
    if buffer is None or writer is None:
        return
    buffer.records.clear()
    _PIPELINE.writer = LogWriter(buffer, writer.output, writer.interval)


atexit.register(stop_logging)
os.register_at_fork(after_in_child=_restart_in_child)
