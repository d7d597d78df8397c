"""Log levels and formats parsed once; records written off the caller's thread, drops counted."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from pathlib import Path

import pytest

from guardproxy.logs import configure_logging, dropped, parse_format, parse_level, stop_logging


@pytest.mark.parametrize("name", ["debug", "DEBUG", "Debug", " debug "])
def test_levels_are_case_insensitive(name: str) -> None:
    assert parse_level(name) == logging.DEBUG


def test_an_unknown_level_or_format_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown log level 'verbose': expected one of debug, "):
        parse_level("verbose")
    with pytest.raises(ValueError, match="expected text or json"):
        parse_format("xml")
    assert parse_format("JSON") == "json"


def test_json_lines_reach_the_stream_and_the_level_filters() -> None:
    stream = io.StringIO()
    configure_logging(logging.INFO, "json", secrets=["admin-token-1"], stream=stream)
    logging.getLogger("guardproxy.t").debug("hidden")
    logging.getLogger("guardproxy.t").info("token %s", "admin-token-1", extra={"port": 1})
    stop_logging()  # writes what is queued
    (line,) = stream.getvalue().splitlines()
    doc = json.loads(line)
    assert (doc["level"], doc["logger"], doc["message"], doc["port"]) == (
        "INFO", "guardproxy.t", "token ***", 1
    )  # fmt: skip


def test_the_caller_never_waits_for_a_stuck_stream() -> None:
    release = threading.Event()

    class StuckStream(io.StringIO):
        def write(self, text: str) -> int:
            release.wait(10)
            return super().write(text)

    stream = StuckStream()
    configure_logging(logging.INFO, "text", stream=stream, buffer_size=10)
    logger = logging.getLogger("guardproxy.t")
    for i in range(100):  # ten wait (and the writer may hold one); the rest are dropped
        logger.info("line %d", i)
    assert 100 - 11 <= dropped() <= 100 - 10
    release.set()
    stop_logging()
    written = stream.getvalue().splitlines()
    assert len(written) == 100 - dropped() and written[0].endswith("line 0")


def test_a_record_keeps_the_message_of_when_it_was_logged() -> None:
    stream = io.StringIO()
    configure_logging(logging.INFO, "text", stream=stream)
    values = ["before"]
    logging.getLogger("guardproxy.t").info("%s", values)
    values[0] = "after"
    stop_logging()
    assert "['before']" in stream.getvalue()


def test_a_forked_worker_writes_its_own_lines(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    with path.open("w", encoding="utf-8") as stream:
        configure_logging(logging.INFO, "text", stream=stream)
        logger = logging.getLogger("guardproxy.t")
        logger.info("from the parent")
        stop_logging()  # written and flushed: the child inherits nothing half-written
        configure_logging(logging.INFO, "text", stream=stream)
        pid = os.fork()
        if pid == 0:  # the child: fork copied no writer thread, the at-fork hook made one
            logger.info("from the child")
            stop_logging()
            os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        stop_logging()
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if " from the " in line]
    assert [line.rpartition(" ")[2] for line in lines] == ["parent", "child"]  # each once
