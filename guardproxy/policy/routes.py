"""Route globs: `*` is one path segment (or part of one), `**` any number of segments.

A trie of literal leading segments resolves a path to its model by matching only the few
globs filed along its segments. `overlap` tells whether two globs can match a common path
(two models may not share one); `overlapping_pairs` finds every such pair of many globs,
comparing only globs whose literal leading segments agree: near-linear in the globs.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Iterable, Iterator, Sequence

STAR, GLOBSTAR = "\0*", "\0**"  # glob tokens; every other token is one literal character
RESERVED_PREFIX = "/guardproxy/"  # the data port answers these paths itself
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_REFUSED_ESCAPES = frozenset({"%2F", "%5C", "%00"})  # a guarded path holding one gets a 400


class _Node:
    """One literal segment of the route trie: the globs whose literal prefix ends here."""

    __slots__ = ("children", "globs")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.globs: list[tuple[int, re.Pattern[str]]] = []


class RouteMatcher:
    """Globs of several owners; `owner(path)` names the one whose glob matches first.

    Globs without a wildcard are found by one dict lookup of the whole path; the others are
    filed in a trie under their literal leading segments, so a path is matched only against
    the few globs filed along its own leading segments, however many models there are (one
    regex alternation of every glob took 2-4 ms a path at 1,000 models).
    """

    __slots__ = ("_depth", "_exact", "_owners", "_root", "patterns")

    def __init__(self, patterns: Iterable[str], owners: Sequence[int] | None = None) -> None:
        self.patterns = tuple(patterns)
        self._owners = tuple(owners) if owners is not None else (0,) * len(self.patterns)
        self._root = _Node()
        self._depth = 0
        literal: list[tuple[int, str]] = []
        for index, pattern in enumerate(self.patterns):
            if "*" not in pattern:
                literal.append((index, pattern))
                continue
            prefix = literal_prefix(pattern)
            node = self._root
            for segment in prefix:
                node = node.children.setdefault(segment, _Node())
            node.globs.append((index, re.compile(glob_to_regex(pattern))))
            self._depth = max(self._depth, len(prefix))
        # A path that is a literal glob gets its answer in one lookup, settled here: the
        # literal glob's index unless an earlier wildcard glob matches it too.
        self._exact: dict[str, int] = {}
        for index, pattern in literal:
            if pattern not in self._exact:
                found = self._first(pattern)
                self._exact[pattern] = index if found is None or index < found else found

    def candidates(self, path: str) -> list[tuple[int, re.Pattern[str]]]:
        """The wildcard globs that may match the path: those filed along its leading segments."""
        found: list[tuple[int, re.Pattern[str]]] = []
        node = self._root
        # Only the trie's depth of segments is split off: a long path costs one scan.
        for segment in path.split("/", self._depth)[: self._depth]:
            if node.globs:
                found += node.globs
            child = node.children.get(segment)
            if child is None:
                return found
            node = child
        return found + node.globs

    def index(self, path: str) -> int | None:
        """The index of the first glob that matches the whole path, else None."""
        found = self._exact.get(path)
        return found if found is not None else self._first(path)

    def _first(self, path: str) -> int | None:
        best: int | None = None
        for index, regex in self.candidates(path):
            if (best is None or index < best) and regex.fullmatch(path) is not None:
                best = index
        return best

    def owner(self, path: str) -> int | None:
        """The owner index of the first glob that matches the whole path, else None."""
        index = self.index(path)
        return None if index is None else self._owners[index]

    def matches(self, path: str) -> bool:
        """Whether any glob matches the whole path."""
        return self.index(path) is not None

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


def unmatchable(route: str) -> str | None:
    """Why no request could ever match the route, as the proxy reads paths; None if one can.

    Paths are matched after their query is dropped, unreserved escapes decoded (others in
    upper case), repeated slashes collapsed and dot segments resolved (hotpath/paths.py):
    a route spelled otherwise validated and left its model's traffic unguarded.
    """
    if "?" in route or "#" in route:
        return "paths are matched without their query (expected the path alone)"
    segments = route.split("/")[1:]
    if "" in segments[:-1]:
        return "paths are matched with repeated slashes collapsed (expected one /)"
    if "." in segments or ".." in segments:
        return "paths are matched with . and .. segments resolved (expected the resolved path)"
    for match in _ESCAPE.finditer(route):
        escape, char = match.group(0), chr(int(match.group(1), 16))
        if char in _UNRESERVED:
            return f"paths are matched with {escape} decoded (expected {char!r})"
        if escape.upper() in _REFUSED_ESCAPES:
            return f"a guarded path holding {escape.upper()} is refused (expected no {escape})"
        if escape != escape.upper():
            return f"paths are matched with escapes in upper case (expected {escape.upper()})"
    if route.startswith(RESERVED_PREFIX):
        return f"the proxy answers {RESERVED_PREFIX} itself (expected a model server's path)"
    return None


_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")


def version_label(version: str | None) -> str:
    """A model version as keys and labels may carry it: short and plain, else a digest."""
    if not version:
        return ""
    if _LABEL.fullmatch(version):
        return version
    return "~" + hashlib.blake2b(version.encode(), digest_size=6).hexdigest()
