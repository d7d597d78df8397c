"""What the guards decided, as span attributes and events and the decisions counter."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from opentelemetry.trace import Span

from guardproxy.guards.groups import telemetry_group
from guardproxy.hotpath.observation import Observation
from guardproxy.policy.routes import RouteMatcher
from guardproxy.policy.table import CACHED_PATH_CHARS
from guardproxy.telemetry.instruments import Instruments
from guardproxy.telemetry.tracing import CURRENT

GroupMode = Literal["label", "hashed", "none"]
ALL_GROUPS = "all"  # what metrics carry when the policy says groups may not be named
MAX_POLICY_VERSIONS = 64
PATH_CACHE = 4096
MAX_MODELS = 1024  # compiled models whose counter keys are kept (a reload builds new ones)
MAX_KEYS = 4096  # counter keys kept per model: (group, decision) pairs


class ModelKeys(NamedTuple):
    """What one compiled model's observations are counted under, looked up once per model."""

    model: object  # the CompiledModel itself: an id is reused once the model is gone
    mode: GroupMode
    region: str
    name: str
    route: str | None  # the route when the model has one, else matched per path
    decided: dict[tuple[str, int], tuple[str, str, str, str]]  # (group, decision) -> key


class GroupLabels:
    """The group a metric or span may carry, per the policy's groups.telemetry; cached."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], str] = {}

    def __call__(self, group: str, mode: GroupMode) -> str:
        """The label for a declared group (or "other") under the mode."""
        label = self._cache.get((group, mode))
        if label is None:
            label = telemetry_group(group, mode) or ALL_GROUPS
            if len(self._cache) < 4096:
                self._cache[(group, mode)] = label
        return label


class DecisionObserver:
    """The proxy observer: counts decisions and annotates the request's SERVER span."""

    def __init__(
        self,
        instruments: Instruments,
        labels: GroupLabels,
    ) -> None:
        self.instruments = instruments
        self.labels = labels
        self._routes: dict[int, tuple[object, tuple[tuple[RouteMatcher, str], ...]]] = {}
        self._by_path: dict[tuple[int, str], tuple[object, str]] = {}  # (spec, path) -> route
        self._models: dict[int, ModelKeys] = {}

    def observe(self, ob: Observation) -> None:
        """Observe one finished guarded exchange."""
        keys = self._models.get(id(ob.model))
        if keys is None or keys.model is not ob.model:
            keys = self._keys_of(ob)
        self._count(ob, keys)
        state = CURRENT.get()
        if state is None:
            return
        route = state.route = keys.route if keys.route is not None else self.route(ob)
        if ob.upstream_seconds > state.upstream_seconds:
            state.upstream_seconds = ob.upstream_seconds
        span = state.span
        if span is not None and span.is_recording():
            self._annotate(span, ob, keys.mode, route)

    def _keys_of(self, ob: Observation) -> ModelKeys:
        model = ob.model
        spec = model.spec
        routes = tuple(spec.routes)
        route = routes[0] if len(routes) == 1 else None
        keys = ModelKeys(model, spec.groups.telemetry, model.region, model.name, route, {})
        if len(self._models) >= MAX_MODELS:
            self._models.clear()
        self._models[id(model)] = keys
        return keys

    def _count(self, ob: Observation, keys: ModelKeys) -> None:
        add = self.instruments.decisions.add_key
        if ob.outcome != "decided":
            add((keys.region, keys.name, ALL_GROUPS, ob.outcome), max(1, len(ob.verdicts)))
            return
        decided = keys.decided
        for verdict in ob.verdicts:
            key = decided.get((verdict.group, verdict.decision))
            if key is None:
                key = self._decided_key(keys, verdict.group, verdict.decision)
            add(key)

    def _decided_key(self, keys: ModelKeys, group: str, decision: int) -> tuple[str, str, str, str]:
        outcome = "positive" if decision else "negative"
        key = (keys.region, keys.name, self.labels(group, keys.mode), outcome)
        if len(keys.decided) >= MAX_KEYS:  # bounded: groups may come from what clients send
            keys.decided.clear()
        keys.decided[(group, decision)] = key
        return key

    def route(self, ob: Observation) -> str:
        """The route pattern the path matched (never the raw path)."""
        spec = ob.model.spec
        cached = self._routes.get(id(spec))
        if cached is None or cached[0] is not spec:
            if len(self._routes) >= MAX_POLICY_VERSIONS:
                self._routes.clear()
            cached = self._routes[id(spec)] = (
                spec,
                tuple((RouteMatcher([p]), p) for p in spec.routes),
            )
        routes = cached[1]
        if len(routes) == 1:
            return routes[0][1]
        key = (id(spec), ob.path)
        known = self._by_path.get(key)
        if known is not None and known[0] is spec:
            return known[1]
        route = next((p for matcher, p in routes if matcher.matches(ob.path)), "")
        if len(ob.path) > CACHED_PATH_CHARS:  # bounded in count and size: clients choose paths
            return route
        if len(self._by_path) >= PATH_CACHE:
            self._by_path.clear()
        self._by_path[key] = (spec, route)
        return route

    def _annotate(self, span: Span, ob: Observation, mode: GroupMode, route: str) -> None:
        if route:
            span.update_name(f"{ob.method} {route}")
            span.set_attribute("http.route", route)
        span.set_attributes(self._attributes(ob, mode))
        for flag in ob.flags:
            action, _, label = flag.partition(":")
            span.add_event(
                "guardproxy.label", {"guardproxy.action": action, "guardproxy.label": label}
            )

    def _attributes(self, ob: Observation, mode: GroupMode) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "guardproxy.region": ob.model.region,
            "guardproxy.model": ob.model.name,
            "guardproxy.model.version": ob.version,
            "guardproxy.policy.version": ob.model.policy_version,
            "guardproxy.thresholds.version": ob.threshold_version,
            "guardproxy.outcome": ob.outcome,
            "guardproxy.sampled": ob.sampled,
        }
        if ob.verdicts:
            first = ob.verdicts[0]
            if mode != "none":
                attributes["guardproxy.group"] = self.labels(first.group, mode)
            attributes["guardproxy.score"] = first.score
            attributes["guardproxy.threshold"] = first.threshold
            attributes["guardproxy.decision"] = first.decision
            attributes["guardproxy.rows"] = len(ob.verdicts)
        if ob.breaker:
            attributes["guardproxy.breaker.state"] = ob.breaker
        if ob.errors:
            attributes["guardproxy.guard_errors"] = ob.errors
        return attributes
