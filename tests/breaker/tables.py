"""Policy tables for breaker tests."""

from __future__ import annotations

from typing import Any

from guardproxy.policy.models import Policy
from guardproxy.policy.table import CompiledModel, PolicyTable, compile_policy

MODELS = ("fraud", "credit")


def table(models: tuple[str, ...] = MODELS, **regions: Any) -> PolicyTable:
    """A table with a default region plus the given ones (name -> breaker section)."""
    entries = {"default": {}, **regions}
    compiled = {
        name: compile_policy(
            Policy.model_validate(
                {"region": name, "breaker": breaker, "models": [{"name": m} for m in models]}
            )
        )
        for name, breaker in entries.items()
    }
    return PolicyTable(compiled, "default")


def model(table: PolicyTable, region: str, name: str) -> CompiledModel:
    """A compiled model of the table."""
    found = table.regions[region].model(name)
    assert found is not None
    return found
