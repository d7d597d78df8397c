"""Bearer tokens on the admin and feedback endpoints, compared in constant time."""

from __future__ import annotations

import hmac


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
