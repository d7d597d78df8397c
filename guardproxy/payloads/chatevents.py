"""What a streamed chat event says as text: OpenAI chat and completions chunks, the
Responses API's events, Anthropic Messages events and Ollama's chat and generate lines, each
text named by its choice (output item, content block) and part."""

from __future__ import annotations

import json
from typing import Any, NamedTuple, TypeGuard

import orjson

from .errors import TooManyValues
from .sse import SSEError
from .strings import is_ollama, string_slots

__all__ = [
    "CONTENT",
    "JSON_TEXTS",
    "EventTexts",
    "Part",
    "documents",
    "event_texts",
    "ollama_texts",
]

Part = tuple[int, str]  # a choice's index and which of its texts: content, refusal, a tool call
CONTENT = "content"
MAX_TOOL_CALLS = 128  # per choice: each keeps a text and a tail of its own
# What a delta says as text: its content, a refusal, a reasoning model's reasoning (vLLM).
_DELTA_TEXTS = (CONTENT, "refusal", "reasoning_content", "reasoning")
# The Responses API: an event's type says which text of which output item its delta adds
# to (by `output_index`, the item's texts kept as a choice's are).
_RESPONSE_DELTAS = {
    "response.output_text.delta": CONTENT,
    "response.refusal.delta": "refusal",
    "response.reasoning_text.delta": "reasoning",
    "response.reasoning_summary_text.delta": "summary",
    "response.function_call_arguments.delta": "arguments",  # JSON, as a tool call's
    "response.custom_tool_call_input.delta": "input",
}
_RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Anthropic Messages: a content block's delta, by the delta's type (`index`: the block's).
_BLOCK_DELTAS: dict[Any, tuple[str, str]] = {
    "text_delta": ("text", CONTENT),
    "thinking_delta": ("thinking", "thinking"),
    "input_json_delta": ("partial_json", "arguments"),  # a tool's input, as JSON text
}
_BLOCK_STARTS: dict[Any, str] = {"text": CONTENT, "thinking": "thinking"}
_MESSAGE_EVENTS = frozenset({"message_start", "message_delta", "ping"})
# Ollama: a chat line's message (or a generate line itself) says its text in these keys.
_OLLAMA_TEXTS = ((CONTENT, "content"), (CONTENT, "response"), ("thinking", "thinking"))
JSON_TEXTS = ("arguments", "function_call", "tool_calls[")  # parts a client parses as JSON


class EventTexts(NamedTuple):
    """An event's texts; the choices (output items, blocks) it finishes; whether the answer
    ends; whether it is an Anthropic Messages event (its errors are named `error`)."""

    texts: list[tuple[Part, str]]
    finished: list[int]
    ended: bool = False
    anthropic: bool = False


NOTHING = EventTexts([], [])


def event_texts(doc: Any, max_choices: int) -> EventTexts:
    """The texts a client reads in one event's JSON document (SSEError for a bad index)."""
    if not isinstance(doc, dict):
        return NOTHING
    choices = doc.get("choices")
    if not isinstance(choices, list):  # a Responses, Messages or Ollama event, or an error
        if is_ollama(doc):
            return _ollama_texts(doc)
        kind = doc.get("type")
        if isinstance(kind, str) and kind.startswith("response."):
            return _response_texts(doc, kind, max_choices)
        return _message_texts(doc, kind, max_choices)
    out: list[tuple[Part, str]] = []
    finished: list[int] = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta, text = choice.get("delta"), choice.get("text")  # chat; completions
        texts = _delta_texts(delta) if isinstance(delta, dict) else []
        if _is_text(text):
            texts.append((CONTENT, text))
        done = _is_text(choice.get("finish_reason"))
        if texts or done:
            index = index_of(choice.get("index", 0), max_choices, "choice")
            out += [((index, part), text) for part, text in texts]
            if done:
                finished.append(index)
    return EventTexts(out, finished)


def _response_texts(doc: dict[str, Any], kind: str, max_choices: int) -> EventTexts:
    """A Responses API event's text; an output item done, or the response's end."""
    name = _RESPONSE_DELTAS.get(kind)
    if name is not None and _is_text(delta := doc.get("delta")):
        index = index_of(doc.get("output_index", 0), max_choices, "output")
        for key in ("content_index", "summary_index"):
            if doc.get(key, 0) != 0:  # another part of the item: a text of its own
                name += f"[{index_of(doc[key], MAX_TOOL_CALLS, 'content')}]"
        return EventTexts([((index, name), delta)], [])
    if kind == "response.output_item.done":
        return EventTexts([], [index_of(doc.get("output_index", 0), max_choices, "output")])
    return EventTexts([], [], True) if kind in _RESPONSE_ENDS else NOTHING


def _message_texts(doc: dict[str, Any], kind: Any, max_choices: int) -> EventTexts:
    """An Anthropic Messages event's text; a content block's end, or the message's."""
    if kind in ("content_block_delta", "content_block_start"):
        index = index_of(doc.get("index", 0), max_choices, "content block")
        name, text = _block_text(doc, kind)
        return EventTexts([((index, name), text)] if _is_text(text) else [], [], anthropic=True)
    if kind == "content_block_stop":
        return EventTexts([], [index_of(doc.get("index", 0), max_choices, "content block")],
                          anthropic=True)  # fmt: skip
    if kind == "message_stop":
        return EventTexts([], [], True, anthropic=True)
    return EventTexts([], [], anthropic=True) if kind in _MESSAGE_EVENTS else NOTHING


def _block_text(doc: dict[str, Any], kind: str) -> tuple[str, Any]:
    """Which text of its block a delta adds to, and what; or a block's own starting text."""
    if kind == "content_block_delta":
        delta = doc["delta"] if isinstance(doc.get("delta"), dict) else {}
        field, name = _BLOCK_DELTAS.get(delta.get("type"), ("", ""))
        return name, delta.get(field) if field else None
    block = doc["content_block"] if isinstance(doc.get("content_block"), dict) else {}
    name = _BLOCK_STARTS.get(block.get("type"), "")  # a block may start with text of its own
    return name, block.get(block["type"]) if name else None


def _ollama_texts(doc: dict[str, Any]) -> EventTexts:
    """An Ollama chat or generate line's texts; `done: true` ends the answer."""
    message = doc.get("message")
    try:
        texts = ollama_texts(message if isinstance(message, dict) else doc)
    except TooManyValues as exc:
        raise SSEError(str(exc)) from None
    done = doc["done"] is True
    return EventTexts([((0, part), text) for part, text in texts], [0] if done else [], done)


def ollama_texts(message: dict[str, Any]) -> list[tuple[str, str]]:
    """The texts of an Ollama message (or generate answer) a client reads: its content (or
    response), thinking, and every string of each tool call's arguments, an object the client
    receives parsed (each string a line of the call's text, so no two run into one word)."""
    out = [(part, text) for part, key in _OLLAMA_TEXTS if _is_text(text := message.get(key))]
    calls = message.get("tool_calls")
    for position, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            index = index_of(position, MAX_TOOL_CALLS, "tool call")
            strings = [c[k] for c, k in string_slots(function, "arguments")]
            out += [(f"tool_call[{index}]", s + "\n") for s in strings if s]
    return out


def documents(data: str) -> list[Any]:
    """An event's JSON: orjson's reading, else Python's (which takes NaN, 1e400 and lone
    surrogates, as a client may), else each line's own, as a client reading lines does
    (Python's `splitlines`, as httpx splits an NDJSON body: at U+2028 or U+0085 too);
    SSEError when none is JSON."""
    try:
        return [orjson.loads(data)]
    except orjson.JSONDecodeError:
        pass
    lines = data.splitlines()
    docs = _lenient([data]) or (len(lines) > 1 and _lenient(lines)) or None
    if docs is None:
        raise SSEError("a chat stream event is not JSON")
    return docs


def _lenient(texts: list[str]) -> list[Any]:
    out = []
    for text in texts:
        try:
            out.append(json.loads(text))
        except (ValueError, RecursionError):
            continue
    return out


def index_of(value: Any, limit: int, what: str) -> int:
    """A choice's or tool call's index as a client reads it: 0, 0.0 and "0" alike."""
    whole = type(value) is float and value.is_integer()
    if whole or (type(value) is str and value.isascii() and value.isdigit() and len(value) < 8):
        value = int(value)
    if type(value) is not int or not 0 <= value < limit:
        raise SSEError(f"{what} index {repr(value)[:20]} outside 0..{limit - 1}")
    return value


def _delta_texts(delta: dict[str, Any]) -> list[tuple[str, str]]:
    """The texts of a delta a client reads: content, refusal, reasoning, tool-call arguments.

    A tool call's arguments arrive in pieces keyed by the call's index, scanned as one text.
    """
    out = [(key, text) for key in _DELTA_TEXTS if _is_text(text := delta.get(key))]
    calls = delta.get("tool_calls")
    for position, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if _is_text(arguments):
            index = index_of(call.get("index", position), MAX_TOOL_CALLS, "tool call")
            out.append((f"tool_calls[{index}]", arguments))
    legacy = delta.get("function_call")
    arguments = legacy.get("arguments") if isinstance(legacy, dict) else None
    if _is_text(arguments):
        out.append(("function_call", arguments))
    return out


def _is_text(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value)
