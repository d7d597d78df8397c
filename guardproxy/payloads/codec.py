"""JSON in and out of the payloads: orjson, parsed and serialised once per body."""

from __future__ import annotations

from typing import Any

import orjson

from guardproxy.payloads.errors import MalformedJson


def loads(data: bytes) -> Any:
    """Parse JSON bytes (MalformedJson, a ValueError, on malformed JSON)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"malformed JSON: {exc}") from None


def dumps(document: Any) -> bytes:
    """Serialise to compact JSON bytes."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
