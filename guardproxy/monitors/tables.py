"""Learned threshold tables: the threshold in force, versions, history, calibration outcomes."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from guardproxy.policy.models import Policy
from guardproxy.policy.thresholds import ThresholdRule, ThresholdTable
from guardproxy.state.base import table_to_json

Rules = dict[tuple[str, str], ThresholdRule]


@dataclass(frozen=True, slots=True)
class Calibration:
    """What one calibration of a region did: published, unchanged, waiting, skipped, failed."""

    region: str
    status: str
    reason: str
    version: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view."""
        return {
            "status": self.status,
            "reason": self.reason,
            "version": self.version,
            "at": self.at,
        }


def current_threshold(policy: Policy, table: ThresholdTable, region: str, group: str) -> float:
    """The threshold in force: the learned rule's low threshold, else the policy's."""
    rule = table.rule(region, group)
    if rule is not None:
        return rule.low
    return policy.decision.per_group.get(group, policy.decision.threshold)


def with_region(table: ThresholdTable, region: str, rules: Mapping[str, ThresholdRule]) -> Rules:
    """The table's rules with the region's replaced by `rules` (keyed by group)."""
    kept = {k: v for k, v in table.rules.items() if k[0] != region}
    return {**kept, **{(region, g): rule for g, rule in rules.items()}}


def next_version(previous: str, rules: Mapping[tuple[str, str], ThresholdRule]) -> str:
    """ "t<n>-<hash>": n counts publications, the hash names the rules (same rules, same hash)."""
    head = previous.partition("-")[0]
    n = int(head[1:]) + 1 if head[:1] == "t" and head[1:].isdigit() else 1
    text = table_to_json(ThresholdTable("", MappingProxyType(dict(rules))))
    return f"t{n}-{hashlib.blake2b(text.encode(), digest_size=4).hexdigest()}"


def history_entry(table: ThresholdTable, region: str, reason: str, at: float) -> dict[str, Any]:
    """A JSON-able record of one table taking effect, for the status page."""
    rules = {
        f"{r}/{g}": [rule.low, rule.high, rule.p_high]
        for (r, g), rule in sorted(table.rules.items())
    }
    return {"version": table.version, "at": at, "region": region, "reason": reason, "rules": rules}
