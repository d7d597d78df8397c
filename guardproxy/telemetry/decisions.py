"""What the guards decided, as span attributes and events and the decisions counter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from opentelemetry.trace import Span

from guardproxy.guards.exchange import Exchange
from guardproxy.guards.groups import telemetry_group
from guardproxy.policy.table import CompiledPolicy, RouteMatcher
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
        thresholds_version: Callable[[], str],
    ) -> None:
        self.instruments = instruments
        self.labels = labels
        self.thresholds_version = thresholds_version
        self._routes: dict[str, tuple[tuple[RouteMatcher, str], ...]] = {}

    def __call__(self, ex: Exchange, policy: CompiledPolicy) -> None:
        """Observe one finished guarded exchange."""
        mode: GroupMode = policy.policy.groups.telemetry
        self._count(ex, policy.region, mode)
        state = CURRENT.get()
        if state is None:
            return
        state.route = self.route(policy, ex.path)
        state.upstream_seconds = max(state.upstream_seconds, ex.upstream_seconds)
        span = state.span
        if span is not None and span.is_recording():
            self._annotate(span, ex, policy, mode, state.route)

    def _count(self, ex: Exchange, region: str, mode: GroupMode) -> None:
        add = self.instruments.decisions.add_key
        if ex.reply is not None or not ex.verdicts:
            outcome = "blocked" if ex.reply is not None else "unscored"
            group = self.labels(ex.groups[0], mode) if ex.groups else ALL_GROUPS
            add((region, group, outcome), max(1, len(ex.verdicts)))
            return
        for verdict in ex.verdicts:
            outcome = "positive" if verdict.decision else "negative"
            add((region, self.labels(verdict.group, mode), outcome))

    def route(self, policy: CompiledPolicy, path: str) -> str:
        """The guarded route pattern the path matched (never the raw path)."""
        routes = self._routes.get(policy.version)
        if routes is None:
            if len(self._routes) >= MAX_POLICY_VERSIONS:
                self._routes.clear()
            patterns = policy.routes.patterns
            routes = tuple((RouteMatcher([p]), p) for p in patterns)
            self._routes[policy.version] = routes
        if len(routes) == 1:
            return routes[0][1]
        return next((p for matcher, p in routes if matcher.matches(path)), "")

    def _annotate(
        self, span: Span, ex: Exchange, policy: CompiledPolicy, mode: GroupMode, route: str
    ) -> None:
        if route:
            span.update_name(f"{ex.method} {route}")
            span.set_attribute("http.route", route)
        span.set_attributes(self._attributes(ex, policy, mode))
        for flag in ex.flags:
            action, _, label = flag.partition(":")
            span.add_event(
                "guardproxy.label", {"guardproxy.action": action, "guardproxy.label": label}
            )

    def _attributes(self, ex: Exchange, policy: CompiledPolicy, mode: GroupMode) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "guardproxy.region": policy.region,
            "guardproxy.policy.version": policy.version,
            "guardproxy.thresholds.version": self.thresholds_version(),
            "guardproxy.sampled": ex.sampled,
        }
        group = ex.verdicts[0].group if ex.verdicts else (ex.groups[0] if ex.groups else "")
        if group and mode != "none":
            attributes["guardproxy.group"] = self.labels(group, mode)
        if ex.verdicts:
            first = ex.verdicts[0]
            attributes["guardproxy.score"] = first.score
            attributes["guardproxy.threshold"] = first.threshold
            attributes["guardproxy.decision"] = first.decision
            attributes["guardproxy.rows"] = len(ex.verdicts)
        breaker = ex.annotations.get("X-Guard-Breaker")
        if breaker:
            attributes["guardproxy.breaker.state"] = breaker
        if ex.reply is not None:
            attributes["guardproxy.blocked"] = True
        if ex.errors:
            attributes["guardproxy.guard_errors"] = len(ex.errors)
        return attributes
