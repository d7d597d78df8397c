"""OpenAI chat completions, completions and responses, Anthropic-style messages and Ollama's
chat and generate answers: the guarded labels are their texts."""

from __future__ import annotations

from typing import Any

from guardproxy.payloads.base import Payload
from guardproxy.payloads.errors import MAX_ROWS, TooManyValues
from guardproxy.payloads.fields import as_list, field, label_row
from guardproxy.payloads.jsonpath import Doc, Slot
from guardproxy.payloads.strings import bounded, is_ollama, string_slots


class OpenAIChat(Payload):
    """OpenAI chat completions: the choices' message texts are what is guarded."""

    protocol = "openai"
    texts = True

    @staticmethod
    def _choices(request_doc: Doc) -> int:
        """The number of choices asked for (n); TooManyValues past the default row limit."""
        n = request_doc.get("n", 1) if isinstance(request_doc, dict) else 1
        if not isinstance(n, int) or n < 1:
            return 1
        # Before a list of n rows is built: n is the client's to pick. The payload does not
        # know --max-rows; the group guard then applies the lower of the two.
        if n > MAX_ROWS:
            raise TooManyValues(n, MAX_ROWS)
        return n

    def feature(self, request_doc: Doc, name: str) -> list[object]:
        """A top-level request field or a metadata entry, the same for every choice."""
        meta = request_doc.get("metadata") if isinstance(request_doc, dict) else None
        if isinstance(meta, dict) and name in meta:
            return [meta[name]] * self._choices(request_doc)
        return [field(request_doc, name, "request")] * self._choices(request_doc)

    def labels(self, response_doc: Doc) -> list[list[str]]:
        """Each text of each choice's message (no content, e.g. a tool call: no text)."""
        return [
            [] if c[k] is None else label_row(c[k], "content")
            for c, k in self._label_slots(response_doc)
        ]

    def json_rows(self, response_doc: Doc) -> frozenset[int]:
        """The rows that are a tool call's (or a legacy function call's) arguments (an
        Anthropic tool's input arrives parsed: its strings are read as they are)."""
        if self.labels_path is None and (_is_message(response_doc) or is_ollama(response_doc)):
            return frozenset()
        slots = self._label_slots(response_doc)
        return frozenset(i for i, (_, key) in enumerate(slots) if key == "arguments")

    def _label_slots(self, response_doc: Doc) -> list[Slot]:
        if self.labels_path is not None:
            return self.labels_path.slots(response_doc)
        if _is_message(response_doc):
            return _block_slots(response_doc["content"])
        if is_ollama(response_doc):
            return _ollama_slots(response_doc)
        if _is_response(response_doc):
            return _response_slots(response_doc)
        choices = as_list(field(response_doc, "choices", "answer"), "answer choices")
        slots: list[Slot] = []
        for choice in choices:
            bounded(slots)
            if isinstance(choice, dict) and "message" not in choice and "text" in choice:
                slots.append((choice, "text"))  # a completions answer
                continue
            message = field(choice, "message", "choice")
            field(message, "content", "message")
            slots += _text_slots(message)
        return slots


def _text_slots(message: dict[str, Any]) -> list[Slot]:
    """Where a client reads a message's text: its content (a string, or the text of each
    part), its refusal, and the arguments of each tool or function call."""
    content = message["content"]
    if isinstance(content, list):
        slots: list[Slot] = [(p, "text") for p in content if isinstance(p, dict) and "text" in p]
    else:
        slots = [(message, "content")]
    if message.get("refusal") is not None:
        slots.append((message, "refusal"))
    calls = message.get("tool_calls")
    functions = (
        [call.get("function") for call in calls if isinstance(call, dict)]
        if isinstance(calls, list)
        else []
    )
    functions.append(message.get("function_call"))
    slots += [
        (f, "arguments")
        for f in functions
        if isinstance(f, dict) and f.get("arguments") is not None
    ]
    return slots


def _response_slots(response: dict[str, Any]) -> list[Slot]:
    """Where a client reads a Responses answer's text: each message's output text and
    refusal, each function call's arguments, a custom tool call's input, the reasoning
    summaries and text it shows, and the joined `output_text` some servers add (as the SDK
    does)."""
    slots: list[Slot] = []
    for item in response["output"]:
        bounded(slots)
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind in ("function_call", "custom_tool_call"):
            key = "arguments" if kind == "function_call" else "input"
            slots += [(item, key)] if isinstance(item.get(key), str) else []
            continue
        parts = item.get("content") if kind == "message" else None
        if kind == "reasoning":
            parts = [*_parts(item.get("summary")), *_parts(item.get("content"))]
        for part in _parts(parts):
            slots += [(part, key) for key in ("text", "refusal") if isinstance(part.get(key), str)]
    if isinstance(response.get("output_text"), str):
        slots.append((response, "output_text"))
    return slots


def _is_response(doc: Doc) -> bool:
    """Whether an answer is a Responses API one (an `output` list, no choices)."""
    return isinstance(doc, dict) and "choices" not in doc and isinstance(doc.get("output"), list)


def _is_message(doc: Doc) -> bool:
    """Whether an answer is an Anthropic Messages one (`type: message`, a list of blocks)."""
    return (
        isinstance(doc, dict)
        and "choices" not in doc
        and doc.get("type") == "message"
        and isinstance(doc.get("content"), list)
    )


def _ollama_slots(answer: dict[str, Any]) -> list[Slot]:
    """Where a client reads an Ollama answer's text: its message's content, thinking and every
    string of each tool call's arguments (an object the client receives parsed); or a generate
    answer's response and thinking."""
    message = answer["message"] if isinstance(answer.get("message"), dict) else answer
    keys = ("content", "thinking") if message is not answer else ("response", "thinking")
    slots: list[Slot] = [(message, key) for key in keys if isinstance(message.get(key), str)]
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            slots += string_slots(function, "arguments")
        bounded(slots)
    return slots


def _block_slots(content: Any) -> list[Slot]:
    """Where a client reads an Anthropic message's text: each text and thinking block, and
    every string of a tool's input (an object the client receives parsed)."""
    slots: list[Slot] = []
    for block in _parts(content):
        bounded(slots)
        kind = block.get("type")
        if kind in ("text", "thinking") and isinstance(block.get(kind), str):
            slots.append((block, kind))
        elif kind in ("tool_use", "server_tool_use"):
            slots += string_slots(block, "input")
    return slots


def _parts(value: Any) -> list[dict[str, Any]]:
    """The objects of a list of content parts (anything else: none)."""
    return [p for p in value if isinstance(p, dict)] if isinstance(value, list) else []
