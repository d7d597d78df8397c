"""The access log: one line per request on the data port.

It takes plain values, so whichever server handles the request can call it once when the
request is finished. The path never carries its query string (it may hold secrets); values a
client chose (path, request id) are cut short and their control characters escaped, so a
client can neither flood the log nor forge a line in it.
"""

from __future__ import annotations

import logging

ACCESS_LOGGER = "guardproxy.access"
MAX_PATH = 1024  # characters of a path kept in the log
MAX_REQUEST_ID = 128
# Control characters as \xNN escapes: a raw newline or escape sequence never reaches the log.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def clean(text: str, limit: int) -> str:
    """Client-chosen text safe for one log line: control characters escaped, cut at `limit`.

    >>> clean("x" * 12, 10)
    'xxxxxxxxxx…'
    """
    cut = text[:limit]
    if not cut.isprintable():
        cut = cut.translate(_ESCAPES)
    return cut + "…" if len(text) > limit else cut


class AccessLog:
    """Writes one record per finished request: at info with --access-log, else at debug."""

    __slots__ = ("level", "logger")

    def __init__(self, enabled: bool = False, logger: logging.Logger | None = None) -> None:
        self.level = logging.INFO if enabled else logging.DEBUG
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)

    @property
    def enabled(self) -> bool:
        """Whether a record would be written (callers skip building one when not)."""
        return self.logger.isEnabledFor(self.level)

    def record(
        self,
        method: str,
        path: str,
        status: int,
        seconds: float,
        sent: int,
        request_id: str,
        region: str = "",
        model: str = "",
        outcome: str = "",
    ) -> None:
        """Log one finished request (a no-op, bar one level check, when the level is off).

        `path` may include a query string: it is cut off here. `sent` counts the response
        body's bytes; `outcome` is how the guards ended the exchange (decided, blocked,
        error, unscored, passed), or refused, streamed or unguarded.
        """
        logger = self.logger
        if not logger.isEnabledFor(self.level):
            return
        fields: dict[str, str | int | float] = {
            "method": clean(method, 16),
            "path": clean(path.partition("?")[0], MAX_PATH),
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "bytes": sent,
            "request_id": clean(request_id, MAX_REQUEST_ID),
            "region": region,
            "model": model,
            "outcome": outcome,
        }
        # makeRecord and handle, not log(): the caller's frame is not worth a stack walk.
        entry = logger.makeRecord(logger.name, self.level, __file__, 0, line(fields), (), None)
        entry.__dict__.update(fields)
        logger.handle(entry)


def line(fields: dict[str, str | int | float]) -> str:
    """`GET /path 200 duration_ms=1.234 bytes=56 request_id=... region=- ...` for text logs."""
    return (
        f"{fields['method']} {fields['path']} {fields['status']} "
        f"duration_ms={fields['duration_ms']} bytes={fields['bytes']} "
        f"request_id={fields['request_id'] or '-'} region={fields['region'] or '-'} "
        f"model={fields['model'] or '-'} outcome={fields['outcome'] or '-'}"
    )
