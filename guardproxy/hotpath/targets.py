"""Request targets: the origin form sent upstream, and the path routes are matched on."""

from __future__ import annotations

from urllib.parse import unquote


def origin_form(target: bytes) -> bytes:
    """The target as path and query: an absolute-form target loses its scheme and host."""
    if target.startswith(b"/") or target == b"*":
        return target
    _, sep, rest = target.partition(b"://")
    if not sep:
        return b"/" + target
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    tail = rest[cut:]
    return tail if tail.startswith(b"/") else b"/" + tail


def route_path(target: bytes) -> str:
    """The path of an origin-form target, percent-decoded, as routes are written."""
    path = target.partition(b"?")[0].decode("latin-1")
    return unquote(path, "latin-1") if "%" in path else path
