"""Bearer tokens on the admin and feedback endpoints, compared in constant time."""

from __future__ import annotations

import hmac
import os
import time
from pathlib import Path


def bearer_matches(authorization: str | None, expected: str | None) -> bool:
    """Whether `Authorization: Bearer <token>` carries the token; no token configured denies.

    A header that is not UTF-8 (aiohttp keeps its bytes as surrogates) is compared as bytes.
    """
    if not expected or not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode("utf-8", "surrogateescape"), expected.encode()
    )


class Token:
    """A token that follows its file: a rotated Kubernetes Secret takes effect without a restart.

    The file is looked at at most once per `every` seconds (a stat; read when it changed),
    so checking a request costs a clock read. Unreadable or empty, the last token stays.
    """

    __slots__ = ("_checked", "_seen", "every", "path", "value")

    def __init__(self, value: str | None, path: str | None = None, every: float = 1.0) -> None:
        self.value, self.path, self.every = value, path, every
        self._checked = time.monotonic()
        self._seen = self._stat()

    def current(self) -> str | None:
        """The token in force now."""
        if self.path is not None and time.monotonic() - self._checked >= self.every:
            self._reread()
        return self.value

    def _stat(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            found = os.stat(self.path)  # follows the ..data link a Secret volume swaps
        except OSError:
            return None
        return (found.st_ino, found.st_mtime_ns, found.st_size)

    def _reread(self) -> None:
        self._checked = time.monotonic()
        seen = self._stat()
        if seen is None or seen == self._seen:
            return
        try:
            text = Path(str(self.path)).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return
        if text:
            self.value, self._seen = text, seen
