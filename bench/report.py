"""Medians per target, ratios against direct and bare pass-through, the table and the JSON."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Sample:
    """One target measured in one round."""

    target: str
    round: int
    rps: float
    errors: int
    cpu_us_per_request: float
    serial_p50_ms: float
    serial_p99_ms: float


@dataclass(frozen=True, slots=True)
class Row:
    """A target's medians over the rounds, and how it compares."""

    target: str
    rps: float
    vs_direct: float | None
    vs_bare: float | None
    serial_p50_ms: float
    serial_p99_ms: float
    added_p50_ms: float | None
    added_p99_ms: float | None
    cpu_us_per_request: float
    capacity_vs_direct: float | None
    errors: int
    rps_spread: float = 0.0  # (max - min) / median over the rounds, in %
    cpu_spread: float = 0.0


@dataclass(frozen=True, slots=True)
class Median:
    """Median of each measure over a target's rounds, and how far the rounds spread."""

    rps: float
    p50: float
    p99: float
    cpu: float
    errors: int
    rps_spread: float = 0.0
    cpu_spread: float = 0.0


def spread(values: list[float]) -> float:
    """(max - min) / median in %: how much the rounds disagree (0 for one round)."""
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle * 100 if middle > 0 else 0.0


def median_of(samples: list[Sample]) -> Median:
    """The per-measure medians (errors are summed: any error matters)."""
    rps = [s.rps for s in samples]
    cpu = [s.cpu_us_per_request for s in samples]
    return Median(
        statistics.median(rps),
        statistics.median(s.serial_p50_ms for s in samples),
        statistics.median(s.serial_p99_ms for s in samples),
        statistics.median(cpu),
        sum(s.errors for s in samples),
        spread(rps),
        spread(cpu),
    )


def ratio(value: float, base: Median | None) -> float | None:
    """value / base throughput, or None without a base."""
    return value / base.rps if base is not None and base.rps > 0 else None


def summarize(
    samples: list[Sample], direct: str = "direct", bare: str = "bare-aiohttp"
) -> list[Row]:
    """One row per target in first-seen order, ratios where their baseline was measured."""
    names = list(dict.fromkeys(s.target for s in samples))
    medians = {n: median_of([s for s in samples if s.target == n]) for n in names}
    base, ref = medians.get(direct), medians.get(bare)
    return [row(n, medians[n], base, ref) for n in names]


def row(name: str, m: Median, direct: Median | None, bare: Median | None) -> Row:
    """A table row from one target's medians."""
    return Row(
        name, m.rps, ratio(m.rps, direct), ratio(m.rps, bare), m.p50, m.p99,
        m.p50 - direct.p50 if direct else None, m.p99 - direct.p99 if direct else None,
        m.cpu, capacity(m, direct), m.errors, m.rps_spread, m.cpu_spread,
    )  # fmt: skip


def capacity(m: Median, direct: Median | None) -> float | None:
    """Requests per CPU-second of the target over direct's: the ratio a busy machine can't skew."""
    if direct is None or m.cpu <= 0:
        return None
    return direct.cpu / m.cpu


COLUMNS = (
    ("target", 20), ("req/s", 9), ("±req/s %", 8), ("vs direct", 9), ("vs bare", 8),
    ("p50 ms", 7), ("p99 ms", 7), ("+p50 ms", 8), ("+p99 ms", 8), ("CPU µs/req", 10),
    ("±CPU %", 6), ("CPU/nginx", 10), ("cap/direct", 10), ("errors", 6),
)  # fmt: skip


def number(value: object) -> str:
    """Floats to three significant-looking digits; None as a dash."""
    if value is None:
        return "-"
    if not isinstance(value, float):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def line(values: tuple[object, ...]) -> str:
    """One table line: the first column left-aligned, the rest right-aligned."""
    cells = [number(v) for v in values]
    widths = [w for _, w in COLUMNS]
    first = cells[0].ljust(widths[0])
    return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])


def format_table(rows: list[Row], nginx: str = "nginx") -> str:
    """A fixed-width text table, one line per target; ± columns: the rounds' spread."""
    header = line(tuple(name for name, _ in COLUMNS))
    base = next((r.cpu_us_per_request for r in rows if r.target == nginx), None)
    body = [
        line((r.target, r.rps, r.rps_spread, r.vs_direct, r.vs_bare, r.serial_p50_ms,
              r.serial_p99_ms, r.added_p50_ms, r.added_p99_ms, r.cpu_us_per_request,
              r.cpu_spread, r.cpu_us_per_request / base if base else None,
              r.capacity_vs_direct, r.errors))
        for r in rows
    ]  # fmt: skip
    return "\n".join([header, "-" * len(header), *body])


def write_json(path: Path, meta: dict[str, Any], rows: list[Row], samples: list[Sample]) -> None:
    """Write the run's settings, the summary rows and every sample."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "rows": [asdict(r) for r in rows], "samples": [asdict(s) for s in samples]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
