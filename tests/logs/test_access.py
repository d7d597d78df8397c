"""The access log: one record per request, its fields, what a client cannot put in it."""

from __future__ import annotations

import logging

import pytest

from guardproxy.logs import AccessLog
from guardproxy.logs.access import ACCESS_LOGGER, MAX_PATH, MAX_REQUEST_ID

FIELDS = ("method", "path", "status", "duration_ms", "bytes", "request_id", "region", "model")


def one(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    """The single access record captured."""
    (found,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    return found


def test_on_it_logs_every_field_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, ACCESS_LOGGER)
    AccessLog(enabled=True).record(
        "POST", "/v2/models/adult/infer?token=abc", 200, 0.0123456, 512, "r-1",
        "sg", "adult", "decided",
    )  # fmt: skip
    entry = one(caplog)
    assert entry.levelno == logging.INFO
    assert {name: getattr(entry, name) for name in (*FIELDS, "outcome")} == {
        "method": "POST",
        "path": "/v2/models/adult/infer",  # never the query string
        "status": 200,
        "duration_ms": 12.346,
        "bytes": 512,
        "request_id": "r-1",
        "region": "sg",
        "model": "adult",
        "outcome": "decided",
    }
    assert entry.getMessage() == (
        "POST /v2/models/adult/infer 200 duration_ms=12.346 bytes=512 request_id=r-1 "
        "region=sg model=adult outcome=decided"
    )
    assert "token" not in entry.getMessage()


def test_off_it_logs_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, ACCESS_LOGGER)
    access = AccessLog()
    access.record("GET", "/x", 204, 0.001, 0, "r-2")
    assert not [r for r in caplog.records if r.name == ACCESS_LOGGER]
    caplog.set_level(logging.DEBUG, ACCESS_LOGGER)
    access.record("GET", "/x", 204, 0.001, 0, "r-2")
    entry = one(caplog)
    assert entry.levelno == logging.DEBUG
    assert entry.getMessage().endswith("bytes=0 request_id=r-2 region=- model=- outcome=-")


def test_client_text_is_escaped_and_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, ACCESS_LOGGER)
    forged = "/a\n2024-01-01 INFO guardproxy.access GET /admin 200\x1b[2J"
    AccessLog(enabled=True).record("GET", forged + "x" * 5000, 200, 0.0, 0, "i" * 1000)
    entry = one(caplog)
    assert "\n" not in entry.getMessage() and "\x1b" not in entry.getMessage()
    assert entry.path.startswith("/a\\x0a2024-01-01") and "\\x1b[2J" in entry.path
    escaped = 2 * 3  # two control characters, each now four characters long
    assert len(entry.path) == MAX_PATH + escaped + 1 and entry.path.endswith("x…")
    assert entry.request_id == "i" * MAX_REQUEST_ID + "…"
