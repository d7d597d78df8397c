"""`guardproxy review`: list sampled exchanges, flagged ones first of all, from JSONL files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_samples(sink_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Every record in the directory's samples-*.jsonl files, oldest file first."""
    for path in sorted(Path(sink_dir).glob("samples-*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)


def matches(
    record: dict[str, Any], region: str | None, group: str | None, label: str | None, flagged: bool
) -> bool:
    """Whether a record passes the review filters."""
    flags = record.get("flags") or []
    if flagged and not flags:
        return False
    if region is not None and record.get("region") != region:
        return False
    if group is not None and group not in (record.get("groups") or []):
        return False
    return label is None or any(flag.split(":", 1)[-1] == label for flag in flags)


def review_line(record: dict[str, Any]) -> str:
    """One line: time, request id, region, groups, flags, decisions."""
    groups = ",".join(record.get("groups") or []) or "*"
    flags = ",".join(record.get("flags") or []) or "-"
    decisions = ",".join(map(str, record.get("decisions") or [])) or "-"
    fields = (record.get("time"), record.get("request_id"), record.get("region"))
    return "  ".join([*map(str, fields), groups, flags, f"decision={decisions}"])


def review_command(
    sink_dir: str | Path,
    region: str | None = None,
    group: str | None = None,
    label: str | None = None,
    flagged_only: bool = True,
    limit: int = 50,
) -> str:
    """The most recent `limit` matching samples, one line each, oldest first."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if not Path(sink_dir).is_dir():
        raise ValueError(f"no sample directory at {sink_dir}")
    chosen = [r for r in read_samples(sink_dir) if matches(r, region, group, label, flagged_only)]
    if not chosen:
        return "no matching samples"
    return "\n".join(review_line(record) for record in chosen[-limit:])
