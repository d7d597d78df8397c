"""`guardproxy top`: a live terminal table of the pod's models, worst first."""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

CLEAR = "\x1b[H\x1b[2J"
COLUMNS = ("STATE", "SCORE", "MODEL", "BREAKER", "ANSWERS", "UNSCORED", "FAILED", "LABELS")


def fetch(admin: str, wait: float = 5.0) -> dict[str, Any]:
    """The fleet view from an admin port (OSError or ValueError when it cannot be read)."""
    url = admin.rstrip("/") + "/status/models"
    with urllib.request.urlopen(url, timeout=wait) as response:
        doc: dict[str, Any] = json.load(response)
    return doc


def render(doc: dict[str, Any], width: int, source: str = "") -> str:
    """The table as text, `width` columns wide."""
    models = doc.get("models", [])
    critical = sum(m["state"] == "critical" for m in models)
    when = datetime.fromtimestamp(doc.get("generated_at", time.time())).strftime("%H:%M:%S")
    head = f"guardproxy top {source}  {when}  {len(models)} models, {critical} critical"
    lines = [head[:width], ""]
    rows = [COLUMNS] + [_cells(m) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for cells, model in zip(rows, [None, *models], strict=True):
        line = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
        reasons = "PROBLEMS" if model is None else _reasons(model)
        lines.append(f"{line}  {reasons}"[:width].rstrip())
    return "\n".join(lines) + "\n"


def _cells(model: dict[str, Any]) -> tuple[str, ...]:
    outcomes = model.get("outcomes", {})
    recent, rates = outcomes.get("recent", {}), outcomes.get("rates", {})
    name = f"{model['region']}/{model['model']}" + (
        f"@{model['version']}" if model["version"] else ""
    )
    return (
        model["state"],
        f"{model['score']:.0f}",
        name,
        model["breaker"],
        str(sum(recent.values())),
        f"{rates.get('unscored', 0.0):.0%}",
        f"{rates.get('error', 0.0):.0%}",
        str(model.get("fairness", {}).get("labels", 0)),
    )


def _reasons(model: dict[str, Any]) -> str:
    return "; ".join(p["text"] for p in model["problems"]) or "-"


def top(
    admin: str,
    interval: float = 2.0,
    once: bool = False,
    out: TextIO = sys.stdout,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show the table, refreshed every `interval` seconds until interrupted (or once)."""
    while True:
        width = shutil.get_terminal_size((160, 40)).columns
        try:
            text = render(fetch(admin), width, admin)
        except (OSError, ValueError) as exc:
            if once:
                print(f"cannot read {admin}/status/models: {exc}", file=sys.stderr)
                return 1
            text = f"cannot read {admin}/status/models: {exc}\n"
        out.write(text if once else CLEAR + text)
        out.flush()
        if once:
            return 0
        try:
            sleep(interval)
        except KeyboardInterrupt:
            return 0
