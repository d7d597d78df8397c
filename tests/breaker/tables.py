"""Policy tables for breaker tests."""

from __future__ import annotations

from typing import Any

from guardproxy.policy.models import Policy
from guardproxy.policy.table import PolicyTable, compile_policy

FRAUD, CREDIT = "/v2/models/fraud/infer", "/v2/models/credit/infer"


def table(routes: tuple[str, ...] = ("/v2/models/*/infer",), **regions: Any) -> PolicyTable:
    """A table with a default region plus the given ones (name -> breaker section)."""
    entries = {"default": {}, **regions}
    compiled = {
        name: compile_policy(
            Policy.model_validate(
                {"region": name, "breaker": breaker, "model": {"routes": list(routes)}}
            )
        )
        for name, breaker in entries.items()
    }
    return PolicyTable(compiled, "default")
