"""Policy directory loading: YAML with positions, ${ENV} substitution, extends, validation."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from pydantic import ValidationError

from guardproxy.masking import MASK, MIN_SECRET_LENGTH, Masker
from guardproxy.policy.baselines import baseline_problems, resolve_baselines
from guardproxy.policy.locate import locate
from guardproxy.policy.marks import MarkedDoc, read_marked
from guardproxy.policy.merge import merge_marked, models_as_list, models_by_name, with_defaults
from guardproxy.policy.models import Policy
from guardproxy.policy.problems import KeyPath, PolicyError, Problem, format_problems
from guardproxy.policy.routes import overlapping_pairs

__all__ = [
    "LoadedPolicies",
    "PolicyError",
    "PolicyFiles",
    "Problem",
    "format_problems",
    "load_directory",
    "load_files",
    "read_policy_files",
    "validate_directory",
]

_SUFFIXES = (".yaml", ".yml")
DATA_LINK = "..data"  # a mounted ConfigMap's link to the version of its files in force
_READS = 3  # reads of a ConfigMap whose ..data keeps moving, before the last is taken
_ENV = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
    secrets: frozenset[str] = frozenset()  # values substituted from the environment


def read_policy_files(path: str | os.PathLike[str]) -> PolicyFiles:
    """Read every top-level *.yaml/*.yml (following symlinks, skipping hidden names).

    A mounted ConfigMap (its files are links into `..data`, a link the kubelet swaps to a
    new directory on each update) is read from the one directory `..data` names, and read
    again if the link moved meanwhile: file by file through the links, a swap in between
    gave a mix of the old and the new policies that was never published.
    """
    directory = Path(path)
    for _ in range(_READS):
        data = _data_directory(directory)
        files = _read_directory(directory, data)
        if data == _data_directory(directory):
            break
    return files


def _data_directory(directory: Path) -> Path | None:
    """Where a ConfigMap's `..data` link points now; None for a plain directory."""
    link = directory / DATA_LINK
    return Path(os.path.realpath(link)) if link.is_symlink() else None


def _read_directory(directory: Path, data: Path | None) -> PolicyFiles:
    """The policy files of a directory, or of the one version `..data` names: its names and
    their contents alike (the top-level links for a new file may not exist yet)."""
    files: dict[str, bytes] = {}
    problems: list[Problem] = []
    source = data or directory
    try:
        entries = sorted(source.iterdir())
    except OSError as exc:
        problems.append(Problem(str(directory), 0, 0, f"cannot read directory: {exc.strerror}"))
        entries = []
    for entry in entries:
        if entry.name.startswith(".") or entry.suffix.lower() not in _SUFFIXES:
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
    secrets: set[str] = set()
    docs, failed, labels = _parse_all(raw, env, problems, secrets)
    policies: dict[str, Policy] = {}
    sources: dict[str, tuple[str, ...]] = {}
    for region in sorted(docs):
        chain = _chain(region, docs, failed, labels)
        if isinstance(chain, str):
            where = docs[region].marks[("extends",)]
            problems.append(Problem(where.file, where.line, where.column, chain))
        if not isinstance(chain, list):
            continue
        policy = _validate(chain, docs, problems, raw.directory)
        if policy is not None:
            policies[region] = policy
            sources[region] = tuple(labels[r] for r in reversed(chain))
    if problems:
        raise PolicyError(_masked(problems, secrets))
    return LoadedPolicies(
        raw.directory,
        MappingProxyType(policies),
        MappingProxyType(sources),
        raw.content_hash,
        frozenset(secrets),
    )


def _masked(problems: list[Problem], secrets: set[str]) -> list[Problem]:
    """Problems whose messages never show a value that came from the environment."""
    masker = Masker(secrets)
    return [replace(p, message=_hidden(masker.text(p.message), secrets)) for p in problems]


def _hidden(message: str, secrets: set[str]) -> str:
    """A message without a secret as a value's repr shows it (escaped) or cuts it ("...").

    A message shows a value as `short()` writes it: a backslash, newline or non-ASCII
    character escaped, and past 57 characters cut: masking the value as it was missed both.
    """
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) < MIN_SECRET_LENGTH:
            continue
        shown = repr(secret)[1:-1]
        *cut, last = message.replace(shown, MASK).split("...")
        message = "...".join([*(_cut_head(part, shown) for part in cut), last])
    return message


def _cut_head(before: str, shown: str) -> str:
    """`before` without the longest head of `shown` it ends with (of MIN_SECRET_LENGTH or more)."""
    for size in range(len(shown) - 1, MIN_SECRET_LENGTH - 1, -1):
        if before.endswith(shown[:size]):
            return before[:-size] + MASK
    return before


def _parse_all(
    raw: PolicyFiles, env: Mapping[str, str], problems: list[Problem], secrets: set[str]
) -> tuple[dict[str, MarkedDoc], set[str], dict[str, str]]:
    docs: dict[str, MarkedDoc] = {}
    failed: set[str] = set()
    labels: dict[str, str] = {}
    for name, content in sorted(raw.files.items()):
        region, label = Path(name).stem, os.path.join(raw.directory, name)
        if region.lower() in {r.lower() for r in labels}:
            problems.append(Problem(label, 0, 0, f"region {region!r} is defined twice"))
            continue
        labels[region] = label
        doc, found = _parse(label, region, content, env, secrets)
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
    label: str, region: str, content: bytes, env: Mapping[str, str], secrets: set[str]
) -> tuple[MarkedDoc | None, list[Problem]]:
    doc, problems = read_marked(label, content, lambda text: _substitute(text, env, secrets))
    if doc is not None:
        problems.extend(_check_region(doc, label, region))
    return doc, problems


def _substitute(
    text: str, env: Mapping[str, str], secrets: set[str] | None = None
) -> tuple[str, list[str]]:
    """${NAME}, ${NAME:-default} from the environment; $${NAME} stays literal.

    Every value taken from the environment is added to `secrets`: whatever reports on the
    policy masks them, since the file's author chose to keep them out of the file.
    """
    if "${" not in text:
        return text, []
    missing: list[str] = []

    def one(match: re.Match[str]) -> str:
        escaped, name, default = match.groups()
        if escaped:
            return match.group(0)[1:]
        value = env.get(name)
        if value and secrets is not None:
            secrets.add(value)
        value = value or default
        if value is None:
            missing.append(
                f"environment variable {name} is not set "
                f"(expected it set, or a default: ${{{name}:-value}})"
            )
            return ""
        return value

    return _ENV.sub(one, text), missing


def _check_region(doc: MarkedDoc, label: str, region: str) -> list[Problem]:
    """The `region:` key must name the file's stem."""
    data = doc.data
    if "region" not in data:
        data["region"] = region
        return [Problem(label, 1, 1, f"missing region (expected region: {region})")]
    if data["region"] != region:
        where = doc.marks[("region",)]
        message = f"region {data['region']!r} does not match the file name"
        return [Problem(label, where.line, where.column, f"{message} (expected region: {region})")]
    return []


def _chain(
    region: str, docs: Mapping[str, MarkedDoc], failed: set[str], known: Iterable[str]
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


def _validate(
    chain: list[str], docs: Mapping[str, MarkedDoc], problems: list[Problem], directory: str
) -> Policy | None:
    merged = MarkedDoc({}, {})
    for name in reversed(chain):
        merged = merge_marked(merged, models_by_name(docs[name]))
    merged = models_as_list(with_defaults(merged))
    if not directory.startswith("<"):  # the embedded default has no directory
        resolve_baselines(merged.data, directory)
    try:
        policy = Policy.model_validate(merged.data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            problems.append(locate(error, merged.data, merged.marks))
        return None
    found = overlapping_routes(policy, merged.marks) + baseline_problems(policy, merged.marks)
    problems.extend(found)
    return None if found else policy


def overlapping_routes(policy: Policy, marks: Mapping[KeyPath, Problem]) -> list[Problem]:
    """A problem at each model whose routes can match a path another model's routes match."""
    models = policy.models
    routes = [(i, route) for i, model in enumerate(models) for route in model.routes]
    owners = [i for i, _ in routes]
    first_pair: dict[tuple[int, int], tuple[int, int]] = {}
    for a, b in overlapping_pairs([route for _, route in routes], owners):
        # Each pair of models is reported once, at its first overlapping routes in order.
        pair = (owners[a], owners[b])
        first_pair[pair] = min(first_pair.get(pair, (a, b)), (a, b))
    problems: list[Problem] = []
    for (i, j), (a, b) in sorted(first_pair.items()):
        first, second = models[i], models[j]
        here, there = _route_mark(marks, i), _route_mark(marks, j)
        message = (
            f"routes of models {first.name!r} ({routes[a][1]}) and {second.name!r} "
            f"({routes[b][1]}) overlap; {second.name!r} is at "
            f"{there.file}:{there.line}:{there.column} (expected each path to name one model)"
        )
        problems.append(Problem(here.file, here.line, here.column, message))
    return problems


def _route_mark(marks: Mapping[KeyPath, Problem], index: int) -> Problem:
    for path in (("models", index, "routes"), ("models", index, "name"), ("models", index)):
        if path in marks:
            return marks[path]
    return marks[()]
