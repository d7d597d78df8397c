r"""A tool call's arguments as the client reads them: JSON string escapes decoded.

A chat answer carries each tool call's arguments as a JSON document inside a string, and the
client parses it: `{"q": "\u0067orilla"}` asks the tool for "gorilla". Terms are looked for
in the arguments with their escapes read as a JSON parser reads them (`\uXXXX`, a surrogate
pair as one character, `\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`), in keys and values
alike, whether or not the arguments parse: a stream delivers them in pieces, and a model's
arguments need not be valid JSON. Nothing is parsed but the strings: an escape a parser
would refuse (`\x`, a short `\u12`) stays as written, and an escape is read once.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Callable
from json import decoder

__all__ = ["Unescaper", "json_strings", "unescape", "unescaped_positions", "unmoved"]

# The json module's string scanner (C), not in its typed interface: (text, index after the
# opening quote, strict) -> (the string read, index after its closing quote).
_scan_string: Callable[[str, int, bool], tuple[str, int]] = decoder.scanstring  # type: ignore[attr-defined]
_ESCAPE = re.compile(
    r"\\(?:u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"  # a surrogate pair
    r"|u([0-9a-fA-F]{4})"
    r'|(["\\/bfnrt]))'
)
# A JSON string: what is between its quotes is group 1.
_STRING = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"', re.DOTALL)
_SIMPLE = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
# The end of a piece that a later piece may make an escape of: a backslash, the start of a
# \uXXXX, or (after a high surrogate's escape) the start of its low one.
_OPEN = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?\Z")
_LOW_OPEN = re.compile(r"(?:\\(?:u(?:[dD](?:[c-fC-F][0-9a-fA-F]{0,2})?)?)?)?")


def unescape(text: str) -> str:
    """The text with its JSON string escapes read as characters.

    Each string of a document is read by the json module's scanner, in C: 5 KB of Cyrillic
    arguments written as \\uXXXX in 7 us, where reading an escape at a time takes 240 us.
    Text with a backslash outside a string, which is not JSON, is read an escape at a time;
    the two read every escape alike.
    """
    if "\\" not in text:
        return text
    out: list[str] = []
    pos = 0
    while (start := text.find('"', pos)) >= 0:
        if text.find("\\", pos, start) >= 0:
            return _ESCAPE.sub(_char, text)
        try:
            string, end = _scan_string(text, start + 1, False)
        except ValueError:  # not closed, or an escape JSON refuses
            return _ESCAPE.sub(_char, text)
        out += (text[pos:start], '"', string, '"')
        pos = end
    if text.find("\\", pos) >= 0:
        return _ESCAPE.sub(_char, text)
    out.append(text[pos:])
    return "".join(out)


def unescaped_positions(text: str) -> tuple[str, Callable[[int], int]]:
    """The text unescaped, and where in `text` an unescaped index comes from (the escape's
    backslash for an escaped character; `len(text)` for the end)."""
    if "\\" not in text:
        return text, unmoved
    pieces, starts, origins, _ = _read(text, True)
    starts.append(sum(map(len, pieces)))
    origins.append(len(text))

    def origin(k: int) -> int:
        i = bisect_right(starts, k) - 1
        return origins[i] + (k - starts[i])

    return "".join(pieces), origin


class Unescaper:
    """Unescapes text arriving in pieces: an escape cut between two pieces is read whole.

    At most the 12 characters of a surrogate pair's escapes wait for the next piece, so a
    stream of arguments is read once, in linear time.
    """

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open = ""  # the end of the last piece: the start of an escape

    def feed(self, piece: str) -> str:
        """The characters `piece` completes (an escape it leaves open waits for the next)."""
        text = self._open + piece
        if "\\" not in text:
            self._open = ""
            return text
        pieces, _, _, cut = _read(text, False)
        self._open = text[cut:]
        return "".join(pieces)


def _read(text: str, final: bool) -> tuple[list[str], list[int], list[int], int]:
    """The unescaped pieces of `text`, where each starts in the result and in `text`, and
    where the text read ends: before an escape left open at its end unless `final`."""
    matches = list(_ESCAPE.finditer(text))
    cut = len(text) if final else _cut(text, matches)
    pieces: list[str] = []
    starts: list[int] = []
    origins: list[int] = []
    size = pos = 0
    for match in matches:
        start = match.start()
        if start >= cut:
            break
        if start > pos:
            pieces.append(text[pos:start])
            starts.append(size)
            origins.append(pos)
            size += start - pos
        pieces.append(_char(match))
        starts.append(size)
        origins.append(start)
        size += 1
        pos = match.end()
    if cut > pos:
        pieces.append(text[pos:cut])
        starts.append(size)
        origins.append(pos)
    return pieces, starts, origins, cut


def _cut(text: str, matches: list[re.Match[str]]) -> int:
    """Where an escape the next piece may complete starts at the end of `text` (else its end).

    After the last escape read there is none, so a backslash there starts no escape yet.
    """
    pos = matches[-1].end() if matches else 0
    tail = _OPEN.search(text, pos)
    cut = len(text) if tail is None else tail.start()
    last = matches[-1] if matches else None
    if last is not None and _is_high(last) and _LOW_OPEN.fullmatch(text, pos):
        cut = last.start()  # a high surrogate waits for its low one
    return cut


def _is_high(match: re.Match[str]) -> bool:
    code = match.group(3)
    return code is not None and code[0] in "dD" and code[1] in "89abAB"


def _char(match: re.Match[str]) -> str:
    """The character an escape stands for."""
    high, low, code, simple = match.groups()
    if high is not None:
        return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00))
    if code is not None:
        return chr(int(code, 16))
    return _SIMPLE[simple]


def unmoved(index: int) -> int:
    """The position map of a text read as written: each index is where it was."""
    return index


def json_strings(text: str) -> list[tuple[int, int]] | None:
    """Where each string of the JSON document `text` holds its characters (its quotes left
    out), in order; None when `text` is not JSON."""
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return None
    return [m.span(1) for m in _STRING.finditer(text)]  # outside strings, JSON has no quote
