"""How decisions and labels are keyed and counted: row ids, per-group deltas, score bins."""

from __future__ import annotations

from collections.abc import Sequence

from guardproxy.hotpath.observation import Observation
from guardproxy.monitors.histograms import score_bin
from guardproxy.policy.models import ModelPolicy
from guardproxy.policy.thresholds import ModelKey
from guardproxy.state.base import PredictionRecord, Tally
from guardproxy.state.counts import cell

Layout = tuple[int, float, float]  # (bins, low, high) of a model's score histograms
DecisionDeltas = dict[tuple[ModelKey, str], list[int]]  # -> [decisions, selected]


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
        # Each field read once into a local: a tuple's fields are slow attributes.
        model, version, request_id = ob.model, ob.version, ob.request_id
        region, name, policy, thresholds = (
            model.region, model.name, model.policy_version, ob.threshold_version
        )  # fmt: skip
        key = (region, name, version)
        for i, (group, score, threshold, decision) in enumerate(ob.verdicts, ob.first_row):
            # _make: a tuple's class called runs its Python __new__, three times as costly.
            records.append(
                PredictionRecord._make((
                    row_id(request_id, i), now, region, name, version, group, score, decision,
                    threshold, policy, thresholds,
                ))
            )  # fmt: skip
            counts = deltas.get((key, group))
            if counts is None:  # not setdefault: that builds a list to drop for every row
                counts = deltas[key, group] = [0, 0]
            counts[0] += 1
            counts[1] += decision
    return records, deltas


def label_tally(record: PredictionRecord, label: int, layout: Layout) -> Tally:
    """How a joined label counts: its confusion cell, and its score's bin split by label."""
    index = score_bin(record.score, *layout)
    return Tally(cell(bool(record.decision), bool(label)), f"{'p' if label else 'n'}:{index}")
