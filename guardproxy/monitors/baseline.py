"""Baselines: reference distributions computed offline from a CSV file, stored as JSON."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardproxy.monitors.drift import Kind, Reference, to_float
from guardproxy.policy.baselines import BASELINE_VERSION


def _read_columns(csv_path: str | Path, names: list[str]) -> dict[str, list[str]]:
    with Path(csv_path).open(newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        missing = [n for n in names if n not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: no column(s) {', '.join(missing)}")
        rows = list(reader)
    return {n: [row[n] for row in rows] for n in names}


def _parse(raw: Sequence[str], kind: Kind) -> list[object]:
    if kind == "categorical":
        return [v.strip() or None for v in raw]
    return [_number(v) for v in raw]


def _number(text: str) -> float | None:
    try:
        return to_float(float(text))
    except ValueError:
        return None


def build_baseline(
    csv_path: str | Path,
    signals: Sequence[tuple[str, Kind]],
    group_column: str | None = None,
    bins: int = 10,
) -> dict[str, Any]:
    """A JSON-able baseline: per group (and "*") per signal, histogram and bounded sample."""
    names = [name for name, _ in signals] + ([group_column] if group_column else [])
    columns = _read_columns(csv_path, names)
    parsed = {name: _parse(columns[name], kind) for name, kind in signals}
    groups: dict[str, dict[str, Any]] = {"*": _references(parsed, signals, bins)}
    if group_column:
        labels = [v.strip() for v in columns[group_column]]
        for group in sorted(set(labels) - {""}):
            keep = [i for i, g in enumerate(labels) if g == group]
            subset = {n: [values[i] for i in keep] for n, values in parsed.items()}
            groups[group] = _references(subset, signals, bins)
    return {
        "version": BASELINE_VERSION,
        "source": Path(csv_path).name,
        "bins": bins,
        "group_column": group_column,
        "signals": dict(signals),
        "groups": groups,
    }


def _references(
    parsed: dict[str, list[object]], signals: Sequence[tuple[str, Kind]], bins: int
) -> dict[str, Any]:
    return {
        name: Reference.from_values(name, kind, parsed[name], bins).to_dict()
        for name, kind in signals
    }


def baseline_command(
    data: str | Path,
    columns: Sequence[str],
    categorical: Sequence[str] = (),
    group: str | None = None,
    bins: int = 10,
    out: str | Path = "baseline.json",
) -> str:
    """`guardproxy baseline`: write the baseline JSON and return a one-line summary."""
    unknown = sorted(set(categorical) - set(columns))
    if unknown:
        raise ValueError(f"categorical column(s) not in --columns: {', '.join(unknown)}")
    signals: list[tuple[str, Kind]] = [
        (c, "categorical") if c in categorical else (c, "numeric") for c in columns
    ]
    doc = build_baseline(data, signals, group, bins)
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")
    return f"wrote {out}: {len(columns)} signal(s), groups {', '.join(doc['groups'])}"
