"""What the guards decided, as span attributes and events and the decisions counter."""

from __future__ import annotations

from typing import Any, Literal

from opentelemetry.trace import Span

from guardproxy.guards.groups import telemetry_group
from guardproxy.hotpath.observation import Observation
from guardproxy.policy.routes import RouteMatcher
from guardproxy.telemetry.instruments import Instruments
from guardproxy.telemetry.tracing import CURRENT

GroupMode = Literal["label", "hashed", "none"]
ALL_GROUPS = "all"  # what metrics carry when the policy says groups may not be named
MAX_POLICY_VERSIONS = 64


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

    def __call__(self, ob: Observation) -> None:
        """Observe one finished guarded exchange."""
        mode: GroupMode = ob.model.spec.groups.telemetry
        self._count(ob, mode)
        state = CURRENT.get()
        if state is None:
            return
        state.route = self.route(ob)
        state.upstream_seconds = max(state.upstream_seconds, ob.upstream_seconds)
        span = state.span
        if span is not None and span.is_recording():
            self._annotate(span, ob, mode, state.route)

    def _count(self, ob: Observation, mode: GroupMode) -> None:
        add = self.instruments.decisions.add_key
        region, model = ob.model.region, ob.model.name
        if ob.outcome != "decided":
            add((region, model, ALL_GROUPS, ob.outcome), max(1, len(ob.verdicts)))
            return
        for verdict in ob.verdicts:
            outcome = "positive" if verdict.decision else "negative"
            add((region, model, self.labels(verdict.group, mode), outcome))

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
        return next((p for matcher, p in routes if matcher.matches(ob.path)), "")

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
