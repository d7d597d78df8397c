"""Baseline files a drift section names: where they are, and whether they fit the model."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeGuard

from guardproxy.policy.models import ModelPolicy, Policy
from guardproxy.policy.problems import KeyPath, Problem

BASELINE_VERSION = 1
BASELINE = ("drift", "reference", "baseline")


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a baseline JSON file, checking its version (ValueError, OSError otherwise)."""
    doc: dict[str, Any] = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or doc.get("version") != BASELINE_VERSION or "groups" not in doc:
        raise ValueError(f"{path}: not a guardproxy baseline (version {BASELINE_VERSION})")
    return doc


def resolve_baselines(data: dict[str, Any], directory: str) -> None:
    """Relative baseline paths, in the region's and each model's drift, against the directory."""
    holders = [data, *(m for m in data.get("models", []) if isinstance(m, dict))]
    for holder in holders:
        drift = holder.get("drift")
        reference = drift.get("reference") if isinstance(drift, dict) else None
        if not isinstance(reference, dict):
            continue
        path = reference.get("baseline")
        if isinstance(path, str) and path and not os.path.isabs(path):
            reference["baseline"] = os.path.join(directory, path)


def baseline_problems(policy: Policy, marks: Mapping[KeyPath, Problem]) -> list[Problem]:
    """A problem for each model whose baseline file is missing, unreadable or does not fit."""
    problems: list[Problem] = []
    for index, model in enumerate(policy.models):
        message = _misfit(model)
        if message is not None:
            where = next((marks[p] for p in _candidates(index) if p in marks), marks.get((), None))
            if where is not None:
                text = f"model {model.name!r}: drift.reference.baseline {message}"
                problems.append(Problem(where.file, where.line, where.column, text))
    return problems


def _candidates(index: int) -> list[KeyPath]:
    return [("models", index, *BASELINE), BASELINE, ("models", index)]


def _misfit(model: ModelPolicy) -> str | None:
    try:
        doc = model_baseline(model)
    except BaselineMisfit as exc:
        return str(exc)
    if doc is None or model.drift is None:
        return None
    path, signals = model.drift.reference.baseline, doc["groups"].get("*", {})
    for name, kind in _watched(model).items():
        entry = signals.get(name)
        if entry is None:
            return f"{path} has no signal {name!r} (it has {sorted(signals)})"
        if entry.get("kind") != kind:
            return f"{path}: signal {name!r} is {entry.get('kind')}, not {kind}"
    return None


class BaselineMisfit(ValueError):
    """A model's baseline file that cannot be read or does not fit its drift signals."""


def model_baseline(model: ModelPolicy) -> dict[str, Any] | None:
    """The model's baseline document, every reference in it checked (BaselineMisfit otherwise).

    Read once, when the policy is: the monitors keep the document the policy was checked
    with, so a file changed or removed later cannot break them until a reload checks it.
    Whether it holds every watched signal is the loader's check (`baseline_problems`).
    """
    drift = model.drift
    if drift is None or not drift.reference.baseline:
        return None
    path = drift.reference.baseline
    try:
        doc = load_baseline(path)
    except (OSError, ValueError) as exc:
        raise BaselineMisfit(f"cannot be read: {exc}") from None
    groups = doc["groups"]
    if not isinstance(groups, dict):
        raise BaselineMisfit(f"{path}: groups must map each group to its signals")
    for group, entries in groups.items():  # a group's own references are used as they come
        if not isinstance(entries, dict):
            raise BaselineMisfit(f"{path}: group {group!r} must map signals to references")
        for name, entry in entries.items():
            broken = entry_problem(entry) if isinstance(entry, dict) else "not an object"
            if broken is not None:
                of = "" if group == "*" else f" of group {group!r}"
                raise BaselineMisfit(f"{path}: signal {name!r}{of}: {broken}")
    return doc


def entry_problem(entry: Mapping[str, Any]) -> str | None:
    """What makes one signal's reference unusable, None when it can be compared with.

    Windows are binned on its edges or categories and compared with its counts: a count per
    bin, finite and not all zero, else every window fails, or alarms on a bin that no value
    can reach.
    """
    if entry.get("kind") == "numeric":
        bins = entry.get("edges", [])
        if not _numbers(bins) or any(a >= b for a, b in pairwise(bins)):
            return "edges must be finite numbers in increasing order"
        if not _numbers(entry.get("sample", [])):
            return "sample must be finite numbers"
    else:
        bins = entry.get("categories", [])
        if not isinstance(bins, list) or not all(isinstance(c, str) for c in bins):
            return "categories must be a list of text"
        if len(set(bins)) != len(bins):
            return "categories must not repeat"
    counts = entry.get("counts")
    if not _numbers(counts) or len(counts) != len(bins) + 1:
        return f"counts must be {len(bins) + 1} numbers, one per bin"
    if any(c < 0 for c in counts) or sum(counts) <= 0:
        return "counts must not be negative, nor all zero"
    return None


def _numbers(values: object) -> TypeGuard[list[float]]:
    """Whether a JSON value is a list of finite numbers."""
    return isinstance(values, list) and all(
        type(v) in (int, float) and math.isfinite(v) for v in values
    )


def _watched(model: ModelPolicy) -> dict[str, str]:
    assert model.drift is not None
    out: dict[str, str] = {s.input: s.kind for s in model.signal_specs()}
    if "score" in model.drift.signals:
        out["score"] = "numeric"
    return out
