"""Policy directory loading: YAML with positions, ${ENV} substitution, extends, validation."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from .models import Policy

KeyPath = tuple[str | int, ...]
_SUFFIXES = (".yaml", ".yml")
_MAP, _SEQ, _STR = (f"tag:yaml.org,2002:{t}" for t in ("map", "seq", "str"))
_MAX_NODES = 100_000
_MAX_DEPTH = 64
_ENV = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One thing wrong in a policy file, at a 1-based line and column (0: the whole file)."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PolicyError(Exception):
    """Every problem found in a policy directory, sorted by file and position."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = sorted(set(problems))
        super().__init__(format_problems(self.problems))


def format_problems(problems: Iterable[Problem]) -> str:
    """One `file:line:column: message` line per problem."""
    return "\n".join(str(p) for p in problems)


@dataclass(frozen=True, slots=True)
class PolicyFiles:
    """The raw policy files of one directory, read once, with their content hash."""

    directory: str
    files: Mapping[str, bytes]
    problems: tuple[Problem, ...] = ()
    content_hash: str = ""


@dataclass(frozen=True, slots=True)
class LoadedPolicies:
    """Validated policies by region, the files each was merged from (base first), the hash."""

    directory: str
    policies: Mapping[str, Policy]
    sources: Mapping[str, tuple[str, ...]]
    content_hash: str


@dataclass(frozen=True, slots=True)
class _Doc:
    data: dict[str, Any]
    marks: dict[KeyPath, Problem]  # position of each key / item; message unused


def read_policy_files(path: str | os.PathLike[str]) -> PolicyFiles:
    """Read every top-level *.yaml/*.yml (following symlinks, skipping hidden names)."""
    directory = Path(path)
    files: dict[str, bytes] = {}
    problems: list[Problem] = []
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        problems.append(Problem(str(directory), 0, 0, f"cannot read directory: {exc.strerror}"))
        entries = []
    for entry in entries:
        if entry.name.startswith(".") or entry.suffix not in _SUFFIXES:
            continue
        _read_entry(entry, files, problems)
    return PolicyFiles(str(directory), files, tuple(problems), _hash(files, problems))


def _read_entry(entry: Path, files: dict[str, bytes], problems: list[Problem]) -> None:
    try:
        if entry.is_dir():
            return
        files[entry.name] = entry.read_bytes()
    except OSError as exc:
        # The kubelet swaps ..data before it removes the old per-file links: a link left
        # dangling into ..data/ is a name on its way out, not a broken policy.
        if entry.is_symlink() and os.readlink(entry).startswith("..data/"):
            return
        problems.append(Problem(str(entry), 0, 0, f"cannot read: {exc.strerror}"))


def _hash(files: Mapping[str, bytes], problems: Iterable[Problem]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{len(files[name])}\0".encode())
        digest.update(files[name])
    for problem in problems:
        digest.update(str(problem).encode())
    return digest.hexdigest()


def load_directory(path: str | os.PathLike[str]) -> LoadedPolicies:
    """Load, merge and validate a policy directory; raise PolicyError with every problem."""
    return load_files(read_policy_files(path))


def validate_directory(path: str | os.PathLike[str]) -> list[Problem]:
    """Every problem in a policy directory; empty when it is valid."""
    try:
        load_directory(path)
    except PolicyError as exc:
        return exc.problems
    return []


def load_files(raw: PolicyFiles, env: Mapping[str, str] | None = None) -> LoadedPolicies:
    """Parse, merge `extends` chains and validate already-read policy files."""
    env = os.environ if env is None else env
    problems = list(raw.problems)
    docs, failed, labels = _parse_all(raw, env, problems)
    policies: dict[str, Policy] = {}
    sources: dict[str, tuple[str, ...]] = {}
    for region in sorted(docs):
        chain = _chain(region, docs, failed, labels)
        if isinstance(chain, str):
            where = docs[region].marks[("extends",)]
            problems.append(Problem(where.file, where.line, where.column, chain))
        if not isinstance(chain, list):
            continue
        policy = _validate(chain, docs, problems)
        if policy is not None:
            policies[region] = policy
            sources[region] = tuple(labels[r] for r in reversed(chain))
    if problems:
        raise PolicyError(problems)
    return LoadedPolicies(
        raw.directory, MappingProxyType(policies), MappingProxyType(sources), raw.content_hash
    )


def _parse_all(
    raw: PolicyFiles, env: Mapping[str, str], problems: list[Problem]
) -> tuple[dict[str, _Doc], set[str], dict[str, str]]:
    docs: dict[str, _Doc] = {}
    failed: set[str] = set()
    labels: dict[str, str] = {}
    for name, content in sorted(raw.files.items()):
        region, label = Path(name).stem, os.path.join(raw.directory, name)
        if region.lower() in {r.lower() for r in labels}:
            problems.append(Problem(label, 0, 0, f"region {region!r} is defined twice"))
            continue
        labels[region] = label
        doc, found = _parse(label, region, content, env)
        problems.extend(found)
        if doc is None or found:
            failed.add(region)
        else:
            docs[region] = doc
    if "default" not in labels:
        missing = os.path.join(raw.directory, "default.yaml")
        problems.append(Problem(missing, 0, 0, "no default policy (expected default.yaml)"))
    return docs, failed, labels


def _parse(
    label: str, region: str, content: bytes, env: Mapping[str, str]
) -> tuple[_Doc | None, list[Problem]]:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        return None, [Problem(label, line, 1, f"not UTF-8 text: {exc.reason}")]
    builder = _Builder(label, env)
    data = builder.document(text)
    if isinstance(data, dict):
        builder.check_region(data, region)
        return _Doc(data, builder.marks), builder.problems
    return None, builder.problems


class _Builder:
    """Builds plain data from YAML nodes, recording where every key and item starts."""

    def __init__(self, label: str, env: Mapping[str, str]) -> None:
        self.label = label
        self.env = env
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

    def check_region(self, data: dict[str, Any], region: str) -> None:
        """The `region:` key must name the file's stem."""
        if "region" not in data:
            self._add_at(1, 1, f"missing region (expected region: {region})")
            data["region"] = region
        elif data["region"] != region:
            where = self.marks[("region",)]
            message = f"region {data['region']!r} does not match the file name"
            self._add_at(where.line, where.column, f"{message} (expected region: {region})")

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
            shown = f" {_short(node.value)}" if isinstance(node, yaml.ScalarNode) else ""
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
            return self._substitute(str(node.value), node)
        try:
            return yaml.SafeLoader("").construct_object(node)
        except Exception as exc:  # constructors raise anything on odd scalars
            self._add(node, f"cannot read value {_short(node.value)}: {_short(exc)}")
        return None

    def _substitute(self, text: str, node: yaml.Node) -> str:
        if "${" not in text:
            return text

        def one(match: re.Match[str]) -> str:
            escaped, name, default = match.groups()
            if escaped:
                return match.group(0)[1:]
            value = self.env.get(name) or default
            if value is None:
                self._add(
                    node,
                    f"environment variable {name} is not set "
                    f"(expected it set, or a default: ${{{name}:-value}})",
                )
                return ""
            return value

        return _ENV.sub(one, text)

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


def _chain(
    region: str, docs: Mapping[str, _Doc], failed: set[str], known: Iterable[str]
) -> list[str] | str | None:
    """The region and its ancestors (own first), a problem with its extends, or None."""
    chain = [region]
    parent = docs[region].data.get("extends")
    while isinstance(parent, str):
        if parent in chain:
            loop = " -> ".join([*chain[chain.index(parent) :], parent])
            own = parent == region  # members of a cycle report it, descendants stay quiet
            return f"extends cycle {loop} (expected a chain that ends)" if own else None
        if parent in failed:
            return None
        if parent not in docs:
            expected = ", ".join(sorted(known))
            message = f"extends unknown region {parent!r} (expected one of: {expected})"
            return message if len(chain) == 1 else None
        chain.append(parent)
        parent = docs[parent].data.get("extends")
    return chain


def _validate(chain: list[str], docs: Mapping[str, _Doc], problems: list[Problem]) -> Policy | None:
    merged = _Doc({}, {})
    for name in reversed(chain):
        merged = _merge(merged, docs[name])
    try:
        return Policy.model_validate(merged.data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            problems.append(_locate(error, merged.data, merged.marks))
        return None


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge recursively; lists and scalars in `over` replace those in `base`."""
    out = dict(base)
    for key, value in over.items():
        old = base.get(key)
        both = isinstance(old, Mapping) and isinstance(value, Mapping)
        out[key] = deep_merge(old, value) if both else value  # type: ignore[arg-type]
    return out


def _merge(base: _Doc, over: _Doc) -> _Doc:
    """Merged data; each key keeps the position of the file its value came from."""
    data = deep_merge(base.data, over.data)
    marks = {p: over.marks.get(p) or base.marks[p] for p in _paths(data, ())}
    return _Doc(data, marks)


def _paths(value: Any, path: KeyPath) -> Iterator[KeyPath]:
    yield path
    if isinstance(value, dict | list):
        for key, child in value.items() if isinstance(value, dict) else enumerate(value):
            yield from _paths(child, (*path, key))


def _locate(error: Any, data: dict[str, Any], marks: dict[KeyPath, Problem]) -> Problem:
    """Turn one pydantic error into a Problem at the key where the value was written."""
    loc = _clean_loc(error["loc"], data, error["type"] == "missing")
    target = loc
    if error["type"] in ("value_error", "assertion_error"):
        target = _refine(loc, error["msg"], data, marks)
    mark = next(marks[target[:k]] for k in range(len(target), -1, -1) if target[:k] in marks)
    return Problem(mark.file, mark.line, mark.column, _describe(error, loc))


def _clean_loc(loc: tuple[Any, ...], data: Any, keep_last: bool) -> KeyPath:
    """The error's path through the data, without pydantic's union member tags."""
    out: list[str | int] = []
    for index, part in enumerate(loc):
        found = isinstance(data, dict) and part in data
        if found or (isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)):
            out.append(part)
            data = data[part]
        elif keep_last and index == len(loc) - 1:
            out.append(part)
    return tuple(out)


def _refine(loc: KeyPath, message: str, data: Any, marks: Mapping[KeyPath, Problem]) -> KeyPath:
    """Point a whole-section error at the key or value its message names."""
    under = [p for p in marks if len(p) > len(loc) and p[: len(loc)] == loc]
    quoted = re.findall(r"'([^']*)'", message)
    keys = [p for name in quoted for p in under if p[-1] == name]
    values = [p for name in quoted for p in under if _get(data, p) == name]
    if keys or values:
        return (keys or values)[0]
    for dotted in re.findall(r"[a-z_]+(?:\.[a-z_]+)+", message):
        parts = tuple(dotted.split("."))
        for k in range(len(loc), -1, -1):
            if (*loc[:k], *parts) in marks:
                return (*loc[:k], *parts)
    return loc


def _get(data: Any, path: KeyPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _describe(error: Any, loc: KeyPath) -> str:
    kind, message = error["type"], str(error["msg"])
    where = _dotted(loc)
    if kind == "missing":
        return f"{_dotted(loc[:-1]) or 'top level'}: missing required key {loc[-1]!r}"
    if kind == "extra_forbidden":
        return f"{where}: unknown key (expected one of: {_allowed_keys(loc[:-1])})"
    if kind in ("value_error", "assertion_error"):
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return f"{where}: {message}" if where else message
    shown = _short(error.get("input"))
    return f"{where or 'policy'}: invalid value {shown} ({message[:1].lower()}{message[1:]})"


def _short(value: object) -> str:
    shown = repr(value) if not isinstance(value, Exception) else str(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _allowed_keys(path: KeyPath) -> str:
    model: type[BaseModel] | None = Policy
    for part in path:
        if model is not None and isinstance(part, str):
            field = model.model_fields.get(part)
            model = _model_in(field.annotation) if field else None
    return ", ".join(model.model_fields) if model else "see the policy reference"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation if issubclass(annotation, BaseModel) else None
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
