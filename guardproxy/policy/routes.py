"""Route globs: `*` is one path segment (or part of one), `**` any number of segments.

One compiled regex per region resolves a path to its model in a single match, and
`overlap` tells whether two globs can match a common path (two models may not share one);
`overlapping_pairs` finds every such pair of many globs, comparing only globs whose literal
leading segments agree, so a pod with a thousand models is checked in near-linear time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence

STAR, GLOBSTAR = "\0*", "\0**"  # glob tokens; every other token is one literal character


class RouteMatcher:
    """Globs of several owners compiled to one regex; `owner(path)` names the one that matches."""

    __slots__ = ("_owners", "_regex", "patterns")

    def __init__(self, patterns: Iterable[str], owners: Sequence[int] | None = None) -> None:
        self.patterns = tuple(patterns)
        self._owners = tuple(owners) if owners is not None else (0,) * len(self.patterns)
        alternatives = "|".join(f"({glob_to_regex(p)})" for p in self.patterns)
        self._regex = re.compile(alternatives) if self.patterns else None

    def owner(self, path: str) -> int | None:
        """The owner index of the first glob that matches the whole path, else None."""
        if self._regex is None:
            return None
        match = self._regex.fullmatch(path)
        if match is None:
            return None
        return self._owners[match.lastindex - 1 if match.lastindex else 0]

    def matches(self, path: str) -> bool:
        """Whether any glob matches the whole path."""
        return self.owner(path) is not None

    def __repr__(self) -> str:
        return f"RouteMatcher({list(self.patterns)!r})"


def glob_to_regex(pattern: str) -> str:
    """The regex (without groups) of one route glob."""
    segments = pattern.split("/")
    out = ""
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            # "/a/**" also matches "/a"; "/a/**/b" matches "/a/b" and "/a/x/y/b".
            out = out.removesuffix("/") + "(?:/.*)?" if last else out + "(?:[^/]+/)*"
            continue
        if segment == "*":
            out += "[^/]+"
        else:
            out += ".*".join(_segment(part) for part in segment.split("**"))
        out += "" if last else "/"
    return out


def _segment(text: str) -> str:
    return "[^/]*".join(re.escape(part) for part in text.split("*"))


def tokens(pattern: str) -> tuple[str, ...]:
    """A glob as literal characters and STAR / GLOBSTAR tokens, segment by segment as
    `glob_to_regex` reads it (a whole `*` segment, one or more characters, is taken as STAR:
    any run, so the overlap test errs towards reporting one)."""
    out: list[str] = []
    segments = pattern.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            if last and out and out[-1] == "/":
                out.pop()  # "/a/**" also matches "/a"
            out.append(GLOBSTAR)  # a middle "**" owns its slash: "/a/**/b" matches "/a/b"
            continue
        for i, part in enumerate(segment.split("**")):
            if i:
                out.append(GLOBSTAR)
            out.extend(STAR if ch == "*" else ch for ch in part)
        if not last:
            out.append("/")
    return tuple(out)


def literal_prefix(pattern: str) -> tuple[str, ...]:
    """The glob's leading segments up to the first that holds a `*`: every path it matches
    starts with exactly these segments (the first is the empty one before the leading `/`)."""
    out: list[str] = []
    for segment in pattern.split("/"):
        if "*" in segment:
            break
        out.append(segment)
    return tuple(out)


def overlapping_pairs(patterns: Sequence[str], owners: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Index pairs (i < j) of globs of different owners that can match a common path.

    Two globs can meet only when one's literal prefix starts the other's, so each glob is
    compared with the globs filed under its own prefix and under the prefixes that start it,
    never with the rest: the work grows with the globs that share leading segments.
    """
    buckets: dict[tuple[str, ...], list[int]] = {}
    prefixes = [literal_prefix(p) for p in patterns]
    for index, prefix in enumerate(prefixes):
        buckets.setdefault(prefix, []).append(index)
    for j, prefix in enumerate(prefixes):
        for length in range(len(prefix) + 1):
            for i in buckets.get(prefix[:length], ()):
                # Under its own prefix a glob meets only the earlier ones: each pair once.
                if length == len(prefix) and i >= j:
                    break
                if owners[i] != owners[j] and overlap(patterns[i], patterns[j]):
                    yield (i, j) if i < j else (j, i)


def overlap(first: str, second: str) -> bool:
    """Whether some path matches both globs (the intersection of their languages is not empty)."""
    if first == second:
        return True  # every glob matches some path
    return _meet(tokens(first), tokens(second))


def _meet(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    seen: set[tuple[int, int]] = set()
    stack = [(0, 0)]
    while stack:
        i, j = stack.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(a) and j == len(b):
            return True
        stack.extend(_steps(a, b, i, j))
    return False


def _steps(a: tuple[str, ...], b: tuple[str, ...], i: int, j: int) -> list[tuple[int, int]]:
    """States reachable by one step: a wildcard matches nothing more, or takes one character."""
    steps: list[tuple[int, int]] = []
    x = a[i] if i < len(a) else None
    y = b[j] if j < len(b) else None
    if x in (STAR, GLOBSTAR):
        steps.append((i + 1, j))
        if y is not None and y not in (STAR, GLOBSTAR) and (x == GLOBSTAR or y != "/"):
            steps.append((i, j + 1))
    if y in (STAR, GLOBSTAR):
        steps.append((i, j + 1))
        if x is not None and x not in (STAR, GLOBSTAR) and (y == GLOBSTAR or x != "/"):
            steps.append((i + 1, j))
    if x is not None and x == y and x not in (STAR, GLOBSTAR):
        steps.append((i + 1, j + 1))
    return steps


_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")


def version_label(version: str | None) -> str:
    """A model version as keys and labels may carry it: short and plain, else a digest."""
    if not version:
        return ""
    if _LABEL.fullmatch(version):
        return version
    return "~" + hashlib.blake2b(version.encode(), digest_size=6).hexdigest()
