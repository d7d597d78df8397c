"""How policy documents combine: `extends` chains, and region defaults under each model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge recursively; lists and scalars in `over` replace those in `base`."""
    out = dict(base)
    for key, value in over.items():
        old = base.get(key)
        both = isinstance(old, Mapping) and isinstance(value, Mapping)
        out[key] = deep_merge(old, value) if both else value  # type: ignore[arg-type]
    return out
