"""The real data the tests read (tests/data/README.md names the sources and licences)."""

from __future__ import annotations

import csv
from pathlib import Path

DATA = Path(__file__).parent / "data"


def compas_rows() -> list[dict[str, str]]:
    """ProPublica's COMPAS rows after their filter (6,172 of the two-year file)."""
    with open(DATA / "compas_two_years.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        r
        for r in rows
        if -30 <= int(r["days_b_screening_arrest"] or 999) <= 30
        and r["is_recid"] != "-1"
        and r["c_charge_degree"] != "O"
        and r["score_text"] != "N/A"
    ]
