"""Masker masked: URL credentials and known values, in text, documents and log records."""

from __future__ import annotations

import logging
import time

from guardproxy.masking import MASK, Masker, MaskingFilter, mask_url


def test_the_log_filter_masks_rendered_messages() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "up %s", ("http://a:b@h",), None)
    assert MaskingFilter().filter(record)
    assert record.getMessage() == "up http://***@h"


def test_url_credentials_are_masked_wherever_they_appear() -> None:
    text = "to http://user:p%40ss@model:8081/x?a=b and redis://:hunter2@cache:6379/0, done"
    masked = mask_url(text)
    assert "p%40ss" not in masked and "hunter2" not in masked and "user" not in masked
    assert "http://***@model:8081/x?a=b" in masked and "redis://***@cache:6379/0" in masked
    assert mask_url("http://model:8081/a@b") == "http://model:8081/a@b"  # @ in the path
    assert mask_url("mail me at a@b.c") == "mail me at a@b.c"


def test_known_values_are_masked_longest_first_and_short_ones_kept() -> None:
    secrets = Masker(["s3cret-token", "s3cret", "ab", None, ""])
    assert secrets.text("x s3cret-token y s3cret z ab") == f"x {MASK} y {MASK} z ab"
    field = {"url": "http://u:pw@h", "list": ["s3cret", 1], "n": 2}
    assert secrets.document(field) == {"url": "http://***@h", "list": [MASK, 1], "n": 2}


def test_masking_takes_linear_time_on_hostile_text() -> None:
    hostile = "://" + "a:" * 200_000  # many userinfo-like runs with no @ to end them
    began = time.perf_counter()
    assert mask_url(hostile + "@") == "://***@"
    mask_url(("http://" + "x" * 50) * 20_000 + "@")
    assert time.perf_counter() - began < 1.0  # quadratic would take minutes
