"""How decisions and labels are keyed and counted: row ids, score bins, per-group deltas."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from guardproxy.monitors.worker import Item
from guardproxy.policy.models import Policy
from guardproxy.state.base import PredictionRecord
from guardproxy.state.counts import GroupCounts

VERSION_HEADER = "X-Guard-Threshold-Version"

Layout = tuple[int, float, float]  # (bins, low, high) of a region's score histograms
DecisionDeltas = dict[tuple[str, str], list[int]]  # (region, group) -> [decisions, selected]
LabelCells = dict[tuple[str, str], GroupCounts]
LabelBins = dict[tuple[str, str, int], dict[int, int]]  # (region, group, label) -> bin counts


def row_id(request_id: str, row: int) -> str:
    """The id a batch row is recorded under: the request id for row 0, else "<id>:<row>"."""
    return request_id if row == 0 else f"{request_id}:{row}"


def bin_of(score: float, bins: int, low: float, high: float) -> int:
    """ScoreHistogram's bin of one score, without numpy."""
    return min(max(math.floor((score - low) / (high - low) * bins), 0), bins - 1)


def histogram_layout(policy: Policy) -> Layout:
    """The policy's score histogram layout: bin count and score range."""
    bins = policy.fairness.bins if policy.fairness is not None else 100
    return (bins, *policy.model.score.range)


def labeled(counts: GroupCounts) -> int:
    """How many of the counted decisions carry a label."""
    return counts.tp + counts.fp + counts.tn + counts.fn


def decision_records(
    batch: list[Item], now: float, table_version: str
) -> tuple[list[PredictionRecord], DecisionDeltas]:
    """A batch's verdicts as prediction records, and its decision counts per (region, group)."""
    records: list[PredictionRecord] = []
    deltas: DecisionDeltas = {}
    for ex, policy in batch:
        version = ex.annotations.get(VERSION_HEADER) or table_version
        for i, v in enumerate(ex.verdicts):
            records.append(
                PredictionRecord(
                    row_id(ex.request_id, i), now, policy.region, v.group, v.score, v.decision,
                    v.threshold, policy.version, version,
                )
            )  # fmt: skip
            counts = deltas.setdefault((policy.region, v.group), [0, 0])
            counts[0] += 1
            counts[1] += v.decision
    return records, deltas


def label_deltas(
    pairs: Sequence[tuple[PredictionRecord, int]], layout_of: Callable[[str], Layout]
) -> tuple[LabelCells, LabelBins]:
    """Labeled decisions aggregated per (region, group): confusion cells and score bins."""
    cells: LabelCells = {}
    bins: LabelBins = {}
    for record, label in pairs:
        counts = cells.setdefault((record.region, record.group), GroupCounts())
        counts.record(bool(record.decision), bool(label))
        index = bin_of(record.score, *layout_of(record.region))
        split = bins.setdefault((record.region, record.group, label), {})
        split[index] = split.get(index, 0) + 1
    return cells, bins
