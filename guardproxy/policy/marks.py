"""YAML reading that records where every key and list item starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from guardproxy.policy.problems import KeyPath, Problem, short

# A string scalar's text -> (text after substitution, one message per failed substitution).
Substitute = Callable[[str], tuple[str, list[str]]]
_MAP, _SEQ, _STR = (f"tag:yaml.org,2002:{t}" for t in ("map", "seq", "str"))
_MAX_NODES = 100_000
_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class MarkedDoc:
    """A document's plain data and the position of each key / item (messages unused)."""

    data: dict[str, Any]
    marks: dict[KeyPath, Problem]


def read_marked(
    label: str, content: bytes, substitute: Substitute
) -> tuple[MarkedDoc | None, list[Problem]]:
    """The top-level mapping of a YAML file with its marks (None if unreadable), problems."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        return None, [Problem(label, line, 1, f"not UTF-8 text: {exc.reason}")]
    builder = _Builder(label, substitute)
    data = builder.document(text)
    if isinstance(data, dict):
        return MarkedDoc(data, builder.marks), builder.problems
    return None, builder.problems


class _Builder:
    """Builds plain data from YAML nodes, recording where every key and item starts."""

    def __init__(self, label: str, substitute: Substitute) -> None:
        self.label = label
        self.substitute = substitute
        self.marks: dict[KeyPath, Problem] = {}
        self.problems: list[Problem] = []
        self.count = 0

    def document(self, text: str) -> Any:
        """The top-level mapping of the text, or None with problems recorded."""
        loader = None
        try:
            loader = yaml.SafeLoader(text)
            node = loader.get_single_node()
            if node is None:
                return self._add_at(1, 1, "empty file (expected a mapping with region: ...)")
            self.marks[()] = self._at(node, "")
            data = self._build(node, (), 0)
            if not isinstance(data, dict):
                self._add(node, f"top level is {_kind(node)} (expected a mapping)")
            return data
        except yaml.MarkedYAMLError as exc:
            return self._yaml_error(exc)
        except yaml.reader.ReaderError as exc:
            reason = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
            return self._add_at(*_position(text, exc.position), f"YAML: {reason}")
        except yaml.YAMLError as exc:
            return self._add_at(1, 1, f"YAML: {str(exc).splitlines()[0]}")
        except _Abort:
            return None
        except RecursionError:
            return self._add_at(1, 1, "YAML nesting too deep")
        finally:
            if loader is not None:
                loader.dispose()

    def _build(self, node: yaml.Node, path: KeyPath, depth: int) -> Any:
        self.count += 1
        if self.count > _MAX_NODES or depth > _MAX_DEPTH:
            self._add(node, "document too large, too deep or a recursive alias")
            raise _Abort
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return self._sequence(node, path, depth)
        return self._scalar(node)

    def _mapping(self, node: yaml.MappingNode, path: KeyPath, depth: int) -> Any:
        if node.tag != _MAP:
            return self._add(node, f"unsupported tag {node.tag} (expected a plain mapping)")
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, out)
            if key is not None:
                self.marks[(*path, key)] = self._at(key_node, "")
                out[key] = self._build(value_node, (*path, key), depth + 1)
        return out

    def _key(self, node: yaml.Node, seen: dict[str, Any]) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
            shown = f" {short(node.value)}" if isinstance(node, yaml.ScalarNode) else ""
            self._add(node, f"key{shown} is {_kind(node)} (expected a string; quote it)")
        elif node.value in seen:
            self._add(node, f"duplicate key {node.value!r} (expected each key once)")
        else:
            return str(node.value)
        return None

    def _sequence(self, node: yaml.SequenceNode, path: KeyPath, depth: int) -> Any:
        if node.tag != _SEQ:
            return self._add(node, f"unsupported tag {node.tag} (expected a plain list)")
        out = []
        for index, item in enumerate(node.value):
            self.marks[(*path, index)] = self._at(item, "")
            out.append(self._build(item, (*path, index), depth + 1))
        return out

    def _scalar(self, node: yaml.Node) -> Any:
        if node.tag == _STR:
            text, messages = self.substitute(str(node.value))
            for message in messages:
                self._add(node, message)
            return text
        try:
            return yaml.SafeLoader("").construct_object(node)
        except Exception as exc:  # constructors raise anything on odd scalars
            self._add(node, f"cannot read value {short(node.value)}: {short(exc)}")
        return None

    def _yaml_error(self, exc: yaml.MarkedYAMLError) -> None:
        mark = exc.problem_mark or exc.context_mark
        context = f" ({exc.context})" if exc.context else ""
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return self._add_at(line, column, f"YAML syntax: {exc.problem}{context}")

    def _at(self, node: yaml.Node, message: str) -> Problem:
        mark = node.start_mark
        return Problem(self.label, mark.line + 1, mark.column + 1, message)

    def _add(self, node: yaml.Node, message: str) -> None:
        self.problems.append(self._at(node, message))

    def _add_at(self, line: int, column: int, message: str) -> None:
        self.problems.append(Problem(self.label, line, column, message))


class _Abort(Exception):
    """Stop building a document that is too large to read."""


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    name = str(node.tag).rsplit(":", 1)[-1]
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _position(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1
