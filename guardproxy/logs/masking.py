"""Secrets kept out of log lines: credentials in URLs and the values of known tokens."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
# Shorter values would garble every line they appear in, and are no secret worth the name.
MIN_SECRET_LENGTH = 4
# The userinfo of any URL ("scheme://user:pass@host" -> "scheme://***@host"). The class stops
# at "/", "@", quotes and whitespace, so each scan from a "://" is bounded by the next one:
# linear time on any input.
_USERINFO = re.compile(r"(?<=://)[^/@\s?#\"'<>]+@")


def mask_url(text: str) -> str:
    """The text with the credentials of every URL in it replaced by ***.

    >>> mask_url("redis://default:hunter2@cache:6379/0 and http://model:8081/v1")
    'redis://***@cache:6379/0 and http://model:8081/v1'
    """
    if "@" not in text:
        return text
    return _USERINFO.sub(MASK + "@", text)


class Secrets:
    """Known secret values (tokens) and URL credentials, masked wherever they appear."""

    __slots__ = ("values",)

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        kept = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH}
        # Longest first, so a secret that contains another is masked whole.
        self.values = tuple(sorted(kept, key=len, reverse=True))

    def text(self, text: str) -> str:
        """The text with every known secret and URL credential masked."""
        for value in self.values:
            if value in text:
                text = text.replace(value, MASK)
        return mask_url(text)

    def value(self, value: Any) -> Any:
        """A log field with its strings masked (lists and mappings too)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {str(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value
