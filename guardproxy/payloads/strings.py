"""Every string of a parsed JSON value, where a client reads text it receives parsed; and
which answers are Ollama's, whose tool calls' arguments are such values."""

from __future__ import annotations

from typing import Any

from guardproxy.payloads.errors import MAX_ROWS, TooManyValues
from guardproxy.payloads.jsonpath import Slot

__all__ = ["bounded", "is_ollama", "string_slots"]


def string_slots(container: Any, key: Any) -> list[Slot]:
    """Every string in container[key], however deeply nested, in document order."""
    slots: list[Slot] = []
    # Not recursive (parsed JSON may nest deeper than Python recurses), and walking each
    # container's keys as it goes: a list of a million is never copied before it is counted.
    stack = [(container, iter((key,)))]
    while stack:
        parent, keys = stack[-1]
        for at in keys:
            value = parent[at]
            if isinstance(value, str):
                slots.append((parent, at))
                bounded(slots)
            elif isinstance(value, dict | list):
                stack.append((value, iter(value if isinstance(value, dict) else range(len(value)))))
                break
        else:
            stack.pop()
    return slots


def bounded(slots: list[Slot]) -> None:
    """TooManyValues once an answer has more texts than any row limit takes: each is folded
    and scanned (a tool input of a million strings held the loop 2 s)."""
    if len(slots) > MAX_ROWS:
        raise TooManyValues(len(slots), MAX_ROWS)


def is_ollama(doc: Any) -> bool:
    """Whether an answer (or a streamed line) is an Ollama chat or generate one: `done`, a
    message or a response, no choices or type."""
    return (
        isinstance(doc, dict)
        and "done" in doc
        and not {"choices", "type"} & doc.keys()
        and (isinstance(doc.get("message"), dict) or isinstance(doc.get("response"), str))
    )
