"""Secrets masked: URL credentials and known values, in text, documents and log records."""

from __future__ import annotations

import logging

from guardproxy.masking import MASK, Masker, MaskingFilter, mask_url


def test_url_credentials_are_masked_wherever_they_appear() -> None:
    text = "to http://user:p%40ss@model:8081/x and redis://:hunter2@cache:6379/0, done"
    masked = mask_url(text)
    assert "p%40ss" not in masked and "hunter2" not in masked
    assert "http://***@model:8081/x" in masked and "redis://***@cache:6379/0" in masked
    assert mask_url("http://model:8081/a@b") == "http://model:8081/a@b"  # no userinfo


def test_known_values_are_masked_longest_first_and_short_ones_kept() -> None:
    masker = Masker(["s3cret-token", "s3cret", "ab"])
    assert masker.text("x s3cret-token y s3cret z ab") == f"x {MASK} y {MASK} z ab"
    doc = {"url": "http://u:s3cret@h", "list": ["s3cret", 1], "s3cret": True}
    assert masker.document(doc) == {"url": "http://***@h", "list": [MASK, 1], MASK: True}


def test_the_log_filter_masks_rendered_messages() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "up %s", ("http://a:b@h",), None)
    assert MaskingFilter().filter(record)
    assert record.getMessage() == "up http://***@h"
