"""Offline calibration: fit thresholds from a labeled CSV, print JSON or a policy snippet."""

from __future__ import annotations

import csv
import json

import numpy as np
import yaml

from guardproxy.monitors.calibrate import FitResult, fit_thresholds
from guardproxy.monitors.histograms import FloatArray


def policy_snippet(result: FitResult) -> str:
    """YAML for a policy's `decision.per_group`, with the fit described in comments."""
    lines = [
        f"# fitted: constraint={result.constraint} objective={result.objective} "
        f"tolerance={result.tolerance} value={result.objective_value:.4f}"
    ]
    per_group: dict[str, float] = {}
    for group, rule in result.groups.items():
        rates = (
            f"selection_rate={_fmt(rule.selection_rate)} tpr={_fmt(rule.tpr)} fpr={_fmt(rule.fpr)}"
        )
        if rule.threshold_high is None:
            per_group[group] = round(rule.threshold, 6)
            lines.append(f"# {group}: {rates}")
        else:
            # a static threshold cannot randomize: keep the one used more often
            per_group[group] = round(
                rule.threshold_high if rule.p_high >= 0.5 else rule.threshold, 6
            )
            lines.append(
                f"# {group}: mix {rule.threshold:.6g} / {rule.threshold_high:.6g} "
                f"with p_high={rule.p_high:.4f} (adapt applies the mix); {rates}"
            )
    return "\n".join(lines) + "\n" + yaml.safe_dump({"per_group": per_group}, sort_keys=True)


def _fmt(value: float | None) -> str:
    """A rate for a comment."""
    return "n/a" if value is None else f"{value:.4f}"


LABEL_WORDS = {"1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0}


def read_csv(
    data: str, score: str, label: str, group: str, weight: str | None
) -> tuple[FloatArray, FloatArray, list[str], FloatArray | None]:
    """Scores, 0/1 labels, groups and weights from a CSV with a header row."""
    with open(data, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [c for c in (score, label, group, weight) if c is not None]
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{data}: no column {', '.join(map(repr, missing))} (columns: {reader.fieldnames})"
            )
        rows = [(reader.line_num, r) for r in reader]
    if not rows:
        raise ValueError(f"{data}: no data rows")
    s = np.array([_number(data, n, score, r[score]) for n, r in rows])
    y = np.array([_label(data, n, label, r[label]) for n, r in rows])
    w = None if weight is None else np.array([_number(data, n, weight, r[weight]) for n, r in rows])
    return s, y, [r[group] for _, r in rows], w


def _number(data: str, line: int, column: str, text: str | None) -> float:
    """A finite number from a cell, or a ValueError naming file, line and column."""
    try:
        value = float(text or "")
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise ValueError(f"{data}:{line}: column {column!r} holds {text!r}, not a number")
    return value


def _label(data: str, line: int, column: str, text: str | None) -> float:
    """A 0/1 label from 0/1/true/false/yes/no, or a ValueError naming file, line and column."""
    value = LABEL_WORDS.get((text or "").strip().lower())
    if value is None:
        raise ValueError(f"{data}:{line}: column {column!r} holds {text!r}, not a 0/1 label")
    return value


def calibrate_command(
    data: str,
    score: str,
    label: str,
    group: str,
    weight: str | None = None,
    constraint: str = "equal_opportunity",
    objective: str = "accuracy",
    cost: tuple[float, float, float, float] | None = None,
    tolerance: float = 0.0,
    snippet: bool = False,
) -> str:
    """Fit thresholds from a labeled CSV; JSON text, or the policy snippet."""
    s, y, g, w = read_csv(data, score, label, group, weight)
    result = fit_thresholds(s, y, g, constraint, objective, cost, w, tolerance)
    return policy_snippet(result) if snippet else json.dumps(result.to_dict(), indent=2)
