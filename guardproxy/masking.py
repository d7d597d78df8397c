"""Secrets kept out of /status, logs, spans and error bodies: URL credentials and known values."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
# Shorter values are not secrets worth the name and would garble every line they appear in.
MIN_SECRET_LENGTH = 4
# The userinfo of any URL: "scheme://user:password@host" -> "scheme://***@host". The class
# stops at "/", "@", quotes and whitespace, so each scan from a "://" is bounded by the next
# one: linear time on any input.
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s?#\"'<>]+@")


def mask_url(text: str) -> str:
    """The text with the credentials of every URL in it replaced by ***.

    >>> mask_url("redis://default:hunter2@cache:6379/0 and http://model:8081/v1")
    'redis://***@cache:6379/0 and http://model:8081/v1'
    """
    if "@" not in text:
        return text
    return _CREDENTIALS.sub(MASK + "@", text)


def mask_query(url: str | None) -> str | None:
    """A configured URL with its query, which may carry a key (`?api_key=...`), as `?***`.

    >>> mask_query("https://collector:4318/v1/traces?token=s3cret")
    'https://collector:4318/v1/traces?***'
    """
    if url is None or "?" not in url:
        return url
    return url.split("?", 1)[0] + "?" + MASK


class Masker:
    """Replaces known secret values (and URL credentials) wherever they appear in text."""

    __slots__ = ("values",)

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        kept = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH}
        self.values = tuple(sorted(kept, key=len, reverse=True))

    def __add__(self, other: Masker) -> Masker:
        return Masker((*self.values, *other.values))

    def text(self, text: str) -> str:
        """The text with every known secret and URL credential masked."""
        for value in self.values:
            if value in text:
                text = text.replace(value, MASK)
        return mask_url(text)

    def document(self, doc: Any) -> Any:
        """A copy of a JSON-able document with every string (keys too) masked."""
        if isinstance(doc, str):
            return self.text(doc)
        if isinstance(doc, dict):
            return {self.text(str(k)): self.document(v) for k, v in doc.items()}
        if isinstance(doc, list | tuple):
            return [self.document(v) for v in doc]
        return doc


class MaskingFilter(logging.Filter):
    """A handler filter masking URL credentials in every record it formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message once, masked; never drops a record."""
        message = record.getMessage()
        masked = mask_url(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
