"""The compiled policy table: one frozen entry per region, resolved by name on the hot path."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any

from guardproxy.policy.baselines import BaselineMisfit, model_baseline
from guardproxy.policy.loader import LoadedPolicies, PolicyError, PolicyFiles, Problem, load_files
from guardproxy.policy.models import ModelPolicy, Policy
from guardproxy.policy.routes import RouteMatcher

ChainFactory = Callable[[str, ModelPolicy, str], object]
PATH_CACHE = 4096  # paths kept per region, least recently used dropped first
# A longer path is matched each time, not kept: 4,096 kept paths of 64 KiB would be 256 MiB.
CACHED_PATH_CHARS = 256
_MISS = object()
BUILTIN_NAME = "default.yaml"


@dataclass(frozen=True, slots=True)
class CompiledModel:
    """One model of a region: its policy, its routes and its guard chain."""

    region: str
    name: str
    spec: ModelPolicy
    policy_version: str
    chain: object = None
    baseline: Mapping[str, Any] | None = None  # the drift baseline, as read with the policy

    @property
    def key(self) -> tuple[str, str]:
        """(region, model): what the breakers and the learned thresholds are kept by."""
        return (self.region, self.name)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A region's validated policy, its version hash, and its models behind one route matcher."""

    region: str
    version: str
    policy: Policy
    sources: tuple[str, ...]
    models: tuple[CompiledModel, ...]
    routes: RouteMatcher
    allowed: RouteMatcher | None = None  # unguarded.action refuse: the paths that still pass
    _by_path: OrderedDict[str, CompiledModel | None] = field(
        default_factory=OrderedDict, compare=False
    )
    _by_name: Mapping[str, CompiledModel] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # By name in one lookup: the monitors and every gauge series ask per model.
        by_name = MappingProxyType({m.name: m for m in self.models})
        object.__setattr__(self, "_by_name", by_name)

    def match(self, path: str) -> CompiledModel | None:
        """The model whose routes match the path (hot path: a dict hit for a path seen before)."""
        cache = self._by_path
        found = cache.get(path, _MISS)
        if found is not _MISS:
            cache.move_to_end(path)
            return found  # type: ignore[return-value]
        owner = self.routes.owner(path)
        model = None if owner is None else self.models[owner]
        if len(path) <= CACHED_PATH_CHARS:
            # Clients choose paths: the least recently used goes, so junk cannot pin the cache.
            cache[path] = model
            if len(cache) > PATH_CACHE:
                cache.popitem(last=False)
        return model

    def refuses(self, readings: Iterable[str]) -> bool:
        """Whether a path no model guards is refused: unguarded.action refuse, and one of
        its readings (as some upstream may route it) outside unguarded.allow."""
        allowed = self.allowed
        return allowed is not None and not all(allowed.matches(path) for path in readings)

    def model(self, name: str) -> CompiledModel | None:
        """A model by name."""
        return self._by_name.get(name)


def policy_version(policy: Policy) -> str:
    """A short hash of the policy's canonical JSON: same content, same version."""
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def compile_policy(
    policy: Policy, sources: Iterable[str] = (), build_chain: ChainFactory | None = None
) -> CompiledPolicy:
    """Compile one validated policy: a guard chain per model, one matcher for all routes."""
    version = policy_version(policy)
    sources = tuple(sources)
    models = tuple(
        CompiledModel(
            policy.region,
            spec.name,
            spec,
            version,
            build_chain(policy.region, spec, version) if build_chain is not None else None,
            _baseline(spec, next(iter(sources), f"<region {policy.region}>")),
        )
        for spec in policy.models
    )
    patterns = [route for spec in policy.models for route in spec.routes]
    owners = [i for i, spec in enumerate(policy.models) for _ in spec.routes]
    unguarded = policy.unguarded
    allowed = RouteMatcher(unguarded.allow) if unguarded.action == "refuse" else None
    return CompiledPolicy(
        policy.region, version, policy, sources, models, RouteMatcher(patterns, owners), allowed
    )


def _baseline(spec: ModelPolicy, where: str) -> dict[str, Any] | None:
    """The model's baseline document (a PolicyError when it no longer fits)."""
    try:
        return model_baseline(spec)
    except BaselineMisfit as exc:
        message = f"model {spec.name!r}: drift.reference.baseline {exc}"
        raise PolicyError([Problem(where, 0, 0, message)]) from None


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
