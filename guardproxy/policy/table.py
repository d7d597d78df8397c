"""The compiled policy table: one frozen entry per region, resolved by name on the hot path."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType

from guardproxy.policy.loader import LoadedPolicies, PolicyError, PolicyFiles, Problem, load_files
from guardproxy.policy.models import Policy

ChainFactory = Callable[[Policy], object]
BUILTIN_NAME = "default.yaml"


class RouteMatcher:
    """Glob routes compiled to one regex: `*` is one path segment, `**` any number."""

    __slots__ = ("_regex", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        alternatives = "|".join(f"(?:{_glob_to_regex(p)})" for p in self.patterns)
        self._regex = re.compile(alternatives) if self.patterns else None

    def matches(self, path: str) -> bool:
        """Whether a request path is guarded."""
        return self._regex is not None and self._regex.fullmatch(path) is not None

    def __repr__(self) -> str:
        return f"RouteMatcher({list(self.patterns)!r})"


def _glob_to_regex(pattern: str) -> str:
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


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A region's validated policy, its version hash, route matcher and guard chain."""

    region: str
    version: str
    policy: Policy
    sources: tuple[str, ...]
    routes: RouteMatcher
    chain: object = None


def policy_version(policy: Policy) -> str:
    """A short hash of the policy's canonical JSON: same content, same version."""
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def compile_policy(
    policy: Policy, sources: Iterable[str] = (), build_chain: ChainFactory | None = None
) -> CompiledPolicy:
    """Compile one validated policy."""
    chain = build_chain(policy) if build_chain is not None else None
    routes = RouteMatcher(policy.model.routes)
    return CompiledPolicy(
        policy.region, policy_version(policy), policy, tuple(sources), routes, chain
    )


@dataclass(frozen=True, slots=True)
class PolicyTable:
    """Every region's compiled policy; unknown names resolve to the default region."""

    regions: Mapping[str, CompiledPolicy]
    default_region: str
    content_hash: str = ""
    secrets: frozenset[str] = frozenset()  # values the policies took from the environment
    _folded: Mapping[str, CompiledPolicy] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.default_region not in self.regions:
            raise ValueError(f"default region {self.default_region!r} is not in the table")
        object.__setattr__(self, "regions", MappingProxyType(dict(self.regions)))
        folded = {name.lower(): entry for name, entry in self.regions.items()}
        object.__setattr__(self, "_folded", MappingProxyType(folded))

    @property
    def default(self) -> CompiledPolicy:
        """The policy unknown or absent region names get."""
        return self.regions[self.default_region]

    def resolve(self, name: str | None) -> tuple[CompiledPolicy, bool]:
        """The named region's policy (any case) and True, else the default and False."""
        if name is None:
            return self.regions[self.default_region], True
        entry = self.regions.get(name) or self._folded.get(name.lower())
        if entry is None:
            return self.regions[self.default_region], False
        return entry, True


def compile_table(
    loaded: LoadedPolicies,
    default_region: str = "default",
    build_chain: ChainFactory | None = None,
) -> PolicyTable:
    """Compile loaded policies; the pod's region is the default if present, else `default`."""
    regions = {
        name: compile_policy(policy, loaded.sources.get(name, ()), build_chain)
        for name, policy in loaded.policies.items()
    }
    chosen = default_region if default_region in regions else "default"
    if chosen not in regions:
        where = loaded.directory or "<policies>"
        raise PolicyError([Problem(where, 0, 0, "no default policy (expected default.yaml)")])
    return PolicyTable(regions, chosen, loaded.content_hash, loaded.secrets)


def builtin_files() -> PolicyFiles:
    """The packaged default policy, as if read from a directory."""
    resource = resources.files("guardproxy.policy").joinpath(BUILTIN_NAME)
    content = resource.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    return PolicyFiles("<builtin>", {BUILTIN_NAME: content}, (), digest)


def builtin_table(
    default_region: str = "default", build_chain: ChainFactory | None = None
) -> PolicyTable:
    """The table of the embedded default policy, used when no directory is configured."""
    return compile_table(load_files(builtin_files()), default_region, build_chain)
