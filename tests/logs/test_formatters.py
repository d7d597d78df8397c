"""Text and JSON log lines: the fields they carry, secrets masked, exceptions kept apart."""

from __future__ import annotations

import json
import logging
import sys

from guardproxy.logs import Masker
from guardproxy.logs.formatters import JsonFormatter, TextFormatter, extras, timestamp


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    """A record as logger.info(message, *args, extra=extra) makes it."""
    made = logging.LogRecord("guardproxy.test", logging.INFO, __file__, 1, message, args, None)
    made.created = 1700000000.25
    made.__dict__.update(extra)
    return made


def test_json_lines_carry_time_level_logger_message_and_extra_fields() -> None:
    formatter = JsonFormatter(Masker(["tok-12345"]))
    line = formatter.format(
        record("up %s as %s", "http://a:b@h:1", "tok-12345", port=8080, tags=["x", "tok-12345"])
    )
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.250Z",
        "level": "INFO",
        "logger": "guardproxy.test",
        "message": "up http://***@h:1 as ***",
        "port": 8080,
        "tags": ["x", "***"],
    }


def test_an_exception_is_one_field_of_the_same_line() -> None:
    try:
        raise ValueError("bad http://u:secret@h")
    except ValueError:
        failed = record("it failed")
        failed.exc_info = sys.exc_info()
    doc = json.loads(JsonFormatter(Masker()).format(failed))
    assert doc["message"] == "it failed"
    assert doc["exception"].startswith("Traceback") and "ValueError" in doc["exception"]
    assert "secret" not in doc["exception"]


def test_fields_json_cannot_encode_become_text() -> None:
    doc = json.loads(JsonFormatter(Masker()).format(record("m", big=2**70, obj=object())))
    assert doc["big"] == 2**70 and doc["obj"].startswith("<object object")


def test_text_lines_are_masked_and_keep_the_classic_shape() -> None:
    line = TextFormatter(Masker()).format(record("to %s", "redis://:pw@cache:6379/0", port=1))
    assert line == "2023-11-14T22:13:20.250Z INFO guardproxy.test to redis://***@cache:6379/0"


def test_extras_are_what_the_call_added() -> None:
    assert extras(record("m", a=1, _private=2)) == {"a": 1}
    assert timestamp(0.0) == "1970-01-01T00:00:00.000Z"
