"""The path a guard decision is made on: the raw request path as an upstream server reads it."""

from __future__ import annotations

import re
import string
from typing import NamedTuple

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(r"/{2,}")
# Encoded characters that servers disagree on: some decode %2F and %5C to path separators
# before routing, some do not; %00 ends a path for others. A guard cannot know which.
_AMBIGUOUS = re.compile(r"%(?:2[Ff]|5[Cc]|00)")


class RoutePath(NamedTuple):
    """A request path normalised for route matching, and its readings to match routes with.

    A tuple: built once per request on the hot path, in one step.
    """

    path: str
    ambiguous: bool = False

    @property
    def key(self) -> str:
        """One name per path however it was spelled (what the exchange and its version read)."""
        return self.path.rstrip("/") or "/"

    def readings(self) -> tuple[str, ...]:
        """Every path an upstream might route this request to (route matching tries each)."""
        readings = [self.path]
        if len(self.path) > 1 and self.path.endswith("/"):
            readings.append(self.path.rstrip("/") or "/")
        if self.ambiguous:
            decoded = _AMBIGUOUS.sub(_separator, self.path)
            readings.append(normalise(decoded))
        return tuple(readings)


def origin_form(target: str, options: bool = False) -> str:
    """The request target as path and query: an absolute-form target loses scheme and host.

    The asterisk-form `*` (the server takes it with OPTIONS alone) stays `*`, and so does,
    for OPTIONS (`options`), an absolute-form target with no path and no query: RFC 9112
    3.2.4 has the last proxy send that one as `*`, a question about the server as a whole,
    not about its `/`.
    """
    if target.startswith("/") or target == "*":
        return target
    scheme, sep, rest = target.partition("://")
    if not sep or "/" in scheme:
        return "/" + target
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    tail = rest[cut:]
    if not tail and options:
        return "*"
    return tail if tail.startswith("/") else "/" + tail


def route_path(raw_path: str) -> RoutePath:
    """The raw path (query dropped) with unreserved escapes decoded, slashes and dots resolved.

    A plain path costs three substring checks; only odd spellings do any work.
    """
    path = raw_path.partition("?")[0].partition("#")[0]
    ambiguous = False
    if "%" in path:
        ambiguous = _AMBIGUOUS.search(path) is not None
        path = _PERCENT.sub(_unreserved, path)
    return RoutePath(normalise(path), ambiguous)


def normalise(path: str) -> str:
    """Duplicate slashes collapsed and dot segments removed (RFC 3986 section 5.2.4)."""
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if "/." in path or path.startswith("."):
        path = _remove_dots(path)
    return path if path.startswith("/") else "/" + path


def _remove_dots(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")
    for segment in segments:
        if segment == "..":
            if len(out) > 1:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # "/a/b/." names the directory "/a/b/"
    return "/".join(out) or "/"


def _unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0).upper()


def _separator(match: re.Match[str]) -> str:
    return "/" if match.group(0).upper() in ("%2F", "%5C") else ""
