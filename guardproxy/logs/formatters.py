"""Log lines as text or as JSON objects (time, level, logger, message, extra fields)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from guardproxy.masking import Masker

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Everything a LogRecord carries by itself; any other attribute came from `extra=`.
STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call passed with `extra=`."""
    return {k: v for k, v in vars(record).items() if k not in STANDARD and not k.startswith("_")}


def timestamp(created: float) -> str:
    """RFC 3339 UTC with milliseconds, as log pipelines parse it."""
    moment = datetime.fromtimestamp(created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message`, one line per record (a traceback follows it), masked."""

    def __init__(self, secrets: Masker) -> None:
        super().__init__(TEXT_FORMAT)
        self.secrets = secrets

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The record's time as RFC 3339 UTC."""
        return timestamp(record.created)

    def format(self, record: logging.LogRecord) -> str:
        """The line, with secrets masked."""
        return self.secrets.text(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the extra fields."""

    def __init__(self, secrets: Masker) -> None:
        super().__init__()
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line; every string field is masked."""
        mask = self.secrets
        doc: dict[str, Any] = {
            "time": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": mask.text(record.getMessage()),
        }
        for key, value in extras(record).items():
            doc.setdefault(key, mask.document(value))
        exception = record.exc_text or (
            self.formatException(record.exc_info) if record.exc_info else None
        )
        if exception:
            doc["exception"] = mask.text(exception)
        if record.stack_info:
            doc["stack"] = mask.text(self.formatStack(record.stack_info))
        try:
            return orjson.dumps(doc, default=str).decode()
        except TypeError:  # what orjson refuses (an int beyond 64 bits), json writes
            return json.dumps(doc, default=str)
