"""Keyed draws: uniform numbers from a secret key and what is scored, never from the request.

A randomized threshold or a sampling decision that a client could compute (an unkeyed hash)
or re-roll (a hash of the request id) would let it choose its own outcome. A keyed BLAKE2b
(a PRF) of the scored content gives the same number for the same content on every retry and
replica, and nobody without the key can tell which number a content gets.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

KEY_BYTES = 32
THRESHOLD = b"gp.threshold"  # BLAKE2b personalisation: independent draws per purpose
SAMPLING = b"gp.sampling"


def derive_key(secret: str) -> bytes:
    """A 32-byte key from an operator's secret of any length."""
    return hashlib.sha256(b"guardproxy decision key\0" + secret.encode()).digest()


class Draws:
    """Uniform numbers in [0, 1) from a keyed hash: same subject, same number."""

    __slots__ = ("_key", "_keyed", "source")

    def __init__(self, key: bytes | None = None, source: str = "generated") -> None:
        self._key = key or os.urandom(KEY_BYTES)
        self.source = source
        self._keyed: dict[bytes, Any] = {}

    def use(self, key: bytes, source: str) -> None:
        """Switch to another key (the fleet's shared one, once the state backend answers)."""
        if len(key) != KEY_BYTES:
            raise ValueError(f"a decision key has {KEY_BYTES} bytes, got {len(key)}")
        self._key, self.source, self._keyed = key, source, {}

    def uniform(self, subject: bytes, purpose: bytes) -> float:
        """The number this subject draws for this purpose (THRESHOLD or SAMPLING)."""
        # A keyed BLAKE2b hashes its key as a first block: copying a hasher that already has
        # it gives the same digest for one compression less, and no parameter parsing.
        keyed = self._keyed.get(purpose)
        if keyed is None:
            keyed = self._keyed[purpose] = hashlib.blake2b(
                digest_size=8, key=self._key, person=purpose
            )
        hasher = keyed.copy()
        hasher.update(subject)
        return int.from_bytes(hasher.digest(), "big") / 2.0**64
