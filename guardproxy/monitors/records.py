"""How decisions and labels are keyed and counted: row ids, per-group deltas, score bins."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from guardproxy.hotpath.observation import Observation
from guardproxy.monitors.histograms import ScoreHistogram
from guardproxy.policy.models import ModelPolicy
from guardproxy.policy.thresholds import ModelKey
from guardproxy.state.base import PredictionRecord
from guardproxy.state.counts import GroupCounts

Layout = tuple[int, float, float]  # (bins, low, high) of a model's score histograms
DecisionDeltas = dict[tuple[ModelKey, str], list[int]]  # -> [decisions, selected]
LabelCells = dict[tuple[ModelKey, str], GroupCounts]
LabelBins = dict[tuple[ModelKey, str], dict[str, int]]  # -> {"p:17": n, "n:3": m}


def row_id(request_id: str, row: int) -> str:
    """The id a batch row is recorded under: the request id for row 0, else "<id>:<row>"."""
    return request_id if row == 0 else f"{request_id}:{row}"


def histogram_layout(spec: ModelPolicy) -> Layout:
    """A model's score histogram layout: bin count and score range."""
    bins = spec.fairness.bins if spec.fairness is not None else 100
    return (bins, *spec.score.range)


def decision_records(
    batch: Sequence[Observation], now: float
) -> tuple[list[PredictionRecord], DecisionDeltas]:
    """A batch's verdicts as prediction records, and its decision counts per model and group."""
    records: list[PredictionRecord] = []
    deltas: DecisionDeltas = {}
    for ob in batch:
        if ob.fallback:
            continue  # the fallback's answers say nothing about the model's fairness
        model = ob.model
        key = (model.region, model.name, ob.version)
        for i, v in enumerate(ob.verdicts, ob.first_row):
            records.append(
                PredictionRecord(
                    row_id(ob.request_id, i), now, model.region, model.name, ob.version,
                    v.group, v.score, v.decision, v.threshold, model.policy_version,
                    ob.threshold_version,
                )
            )  # fmt: skip
            counts = deltas.setdefault((key, v.group), [0, 0])
            counts[0] += 1
            counts[1] += v.decision
    return records, deltas


def label_deltas(
    pairs: Sequence[tuple[PredictionRecord, int]], layout_of: Callable[[ModelKey], Layout]
) -> tuple[LabelCells, LabelBins]:
    """Labeled decisions aggregated per model version and group: confusion cells and bins."""
    cells: LabelCells = {}
    scored: dict[tuple[ModelKey, str], tuple[list[float], list[int]]] = {}
    for record, label in pairs:
        owner = (record.key, record.group)
        cells.setdefault(owner, GroupCounts()).record(bool(record.decision), bool(label))
        scores, labels = scored.setdefault(owner, ([], []))
        scores.append(record.score)
        labels.append(label)
    bins: LabelBins = {}
    for owner, (scores, labels) in scored.items():
        histogram = ScoreHistogram(*layout_of(owner[0]))
        histogram.add(scores, labels)
        bins[owner] = histogram.to_dict()
    return cells, bins
