"""Learned threshold tables: the threshold in force, versions, history, calibration outcomes."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from guardproxy.policy.models import ModelPolicy
from guardproxy.policy.thresholds import ModelKey, RuleKey, ThresholdRule, ThresholdTable
from guardproxy.state.base import key_text, table_to_json

Rules = dict[RuleKey, ThresholdRule]


@dataclass(frozen=True, slots=True)
class Calibration:
    """What one calibration of a model did: published, unchanged, waiting, skipped, failed."""

    key: ModelKey
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


def current_threshold(spec: ModelPolicy, table: ThresholdTable, key: ModelKey, group: str) -> float:
    """The threshold in force: the learned rule's low threshold, else the policy's."""
    rule = table.rule(key, group)
    if rule is not None:
        return rule.low
    return spec.decision.per_group.get(group, spec.decision.threshold)


def with_model(table: ThresholdTable, key: ModelKey, rules: Mapping[str, ThresholdRule]) -> Rules:
    """The table's rules with a model version's replaced by `rules` (keyed by group)."""
    kept = {k: v for k, v in table.rules.items() if k[:3] != key}
    return {**kept, **{(*key, g): rule for g, rule in rules.items()}}


def next_version(previous: str, rules: Mapping[RuleKey, ThresholdRule]) -> str:
    """ "t<n>-<hash>": n counts publications, the hash names the rules (same rules, same hash)."""
    head = previous.partition("-")[0]
    n = int(head[1:]) + 1 if head[:1] == "t" and head[1:].isdigit() else 1
    text = table_to_json(ThresholdTable("", MappingProxyType(dict(rules))))
    return f"t{n}-{hashlib.blake2b(text.encode(), digest_size=4).hexdigest()}"


def history_entry(table: ThresholdTable, key: str, reason: str, at: float) -> dict[str, Any]:
    """A JSON-able record of one table taking effect, for the status page."""
    rules = {
        f"{key_text(k[:3])}/{k[3]}": [rule.low, rule.high, rule.p_high]
        for k, rule in sorted(table.rules.items())
    }
    return {"version": table.version, "at": at, "model": key, "reason": reason, "rules": rules}
