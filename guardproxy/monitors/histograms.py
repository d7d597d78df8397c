"""Score histograms split by label, and the operating points (curves) they imply.

A `Curve` lists candidate thresholds in ascending order; at `thresholds[i]` the weight of
positive-label scores that are >= the threshold is `pos[i]` (negatives: `neg[i]`). The
first threshold selects everybody, the last selects nobody.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Curve:
    """Selected label weights at each candidate threshold of one group."""

    thresholds: FloatArray
    pos: FloatArray
    neg: FloatArray
    count: int

    @property
    def pos_total(self) -> float:
        """Weight of positive labels."""
        return float(self.pos[0])

    @property
    def neg_total(self) -> float:
        """Weight of negative labels."""
        return float(self.neg[0])

    def index_at(self, threshold: float) -> int:
        """Index of the candidate that selects what `score >= threshold` selects."""
        index = int(np.searchsorted(self.thresholds, threshold, side="left"))
        return min(index, len(self.thresholds) - 1)


def curve_from_scores(scores: FloatArray, labels: FloatArray, weights: FloatArray) -> Curve:
    """The curve of raw scores: candidates are the unique scores plus one above the maximum."""
    unique, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(inverse, weights=weights * labels, minlength=len(unique))
    neg = np.bincount(inverse, weights=weights * (1.0 - labels), minlength=len(unique))
    top = np.nextafter(unique[-1], np.inf) if len(unique) else 0.0
    return Curve(
        thresholds=np.append(unique, top),
        pos=_tail_sums(pos.astype(np.float64)),
        neg=_tail_sums(neg.astype(np.float64)),
        count=len(scores),
    )


def score_bin(score: float, bins: int, low: float, high: float) -> int:
    """The bin of one score, as `ScoreHistogram.bin_index` finds it, without making arrays."""
    return min(max(math.floor((score - low) / (high - low) * bins), 0), bins - 1)


def _tail_sums(values: FloatArray) -> FloatArray:
    """sums[i] = values[i:].sum(), with a trailing 0."""
    return np.append(np.cumsum(values[::-1])[::-1], 0.0).astype(np.float64)


class ScoreHistogram:
    """Fine score histograms of positive and negative labels: integer, mergeable counts.

    A score s falls in bin min(int((s - low) / (high - low) * bins), bins - 1), clipped
    at 0; bin edge k is low + k * (high - low) / bins, and a threshold at edge k selects
    the bins k..bins-1 (edge `bins` selects nobody).
    """

    __slots__ = ("bins", "high", "low", "neg", "pos")

    def __init__(
        self,
        bins: int = 100,
        low: float = 0.0,
        high: float = 1.0,
        pos: IntArray | None = None,
        neg: IntArray | None = None,
    ) -> None:
        if bins < 1 or not low < high:
            raise ValueError(
                f"a histogram needs bins >= 1 and low < high, got {bins}, {low}, {high}"
            )
        self.bins, self.low, self.high = bins, float(low), float(high)
        self.pos = np.zeros(bins, np.int64) if pos is None else np.asarray(pos, np.int64)
        self.neg = np.zeros(bins, np.int64) if neg is None else np.asarray(neg, np.int64)
        if self.pos.shape != (bins,) or self.neg.shape != (bins,):
            raise ValueError(f"pos and neg must have {bins} bins")

    def bin_index(self, scores: ArrayLike) -> IntArray:
        """The bin of each score (see the class docstring)."""
        values = np.asarray(scores, np.float64)
        if np.isnan(values).any():
            raise ValueError("scores must not be NaN")
        scaled = np.floor((values - self.low) / (self.high - self.low) * self.bins)
        return np.clip(scaled, 0, self.bins - 1).astype(np.int64)

    def add(self, scores: ArrayLike, labels: ArrayLike) -> None:
        """Count labeled scores (labels are 0/1 or booleans)."""
        index = self.bin_index(scores)
        positive = np.asarray(labels).astype(bool)
        self.pos += np.bincount(index[positive], minlength=self.bins)
        self.neg += np.bincount(index[~positive], minlength=self.bins)

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        """A new histogram holding both counts; the layouts must match."""
        if (self.bins, self.low, self.high) != (other.bins, other.low, other.high):
            raise ValueError("cannot merge histograms with different bins or range")
        return ScoreHistogram(
            self.bins, self.low, self.high, self.pos + other.pos, self.neg + other.neg
        )

    @property
    def edges(self) -> FloatArray:
        """The bins + 1 bin edges, the candidate thresholds."""
        return np.linspace(self.low, self.high, self.bins + 1)

    def edge_index(self, threshold: float) -> int:
        """The edge a threshold stands for: rounded up to the next edge, clipped."""
        position = (threshold - self.low) / (self.high - self.low) * self.bins
        return int(np.clip(math.ceil(position - 1e-9), 0, self.bins))

    def curve(self) -> Curve:
        """The curve with the bin edges as candidate thresholds."""
        pos = _tail_sums(self.pos.astype(np.float64))
        neg = _tail_sums(self.neg.astype(np.float64))
        return Curve(self.edges, pos, neg, int(self.pos.sum() + self.neg.sum()))

    def rates(self, threshold: float) -> dict[str, float | None]:
        """selection_rate, true_positive_rate, false_positive_rate at a threshold."""
        k = self.edge_index(threshold)
        tp, fp = int(self.pos[k:].sum()), int(self.neg[k:].sum())
        positives, negatives = int(self.pos.sum()), int(self.neg.sum())
        return {
            "selection_rate": _ratio(tp + fp, positives + negatives),
            "true_positive_rate": _ratio(tp, positives),
            "false_positive_rate": _ratio(fp, negatives),
        }

    def to_dict(self) -> dict[str, int]:
        """Non-zero bins as a flat mapping ("p:17", "n:17"), ready for a Redis hash."""
        out = {f"p:{i}": int(v) for i, v in enumerate(self.pos) if v}
        out.update({f"n:{i}": int(v) for i, v in enumerate(self.neg) if v})
        return out

    @classmethod
    def from_dict(
        cls,
        mapping: Mapping[str, int | str],
        bins: int = 100,
        low: float = 0.0,
        high: float = 1.0,
    ) -> ScoreHistogram:
        """Read back `to_dict` (values may be strings, as Redis answers); other keys are ignored."""
        hist = cls(bins, low, high)
        for key, raw_value in mapping.items():
            kind, _, index = key.partition(":")
            if kind in ("p", "n") and index.isdigit():
                target = hist.pos if kind == "p" else hist.neg
                if int(index) >= bins:
                    raise ValueError(f"histogram key {key!r} is beyond {bins} bins")
                target[int(index)] = int(raw_value)
        return hist


def _ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, None when there is nothing to divide."""
    return numerator / denominator if denominator > 0 else None


def upper_hull(x: FloatArray, y: FloatArray) -> NDArray[np.intp]:
    """Indices of the upper concave hull of the points, by increasing x (ties: highest y)."""
    order = np.lexsort((y, x))
    order = order[np.append(x[order][1:] != x[order][:-1], True)]
    xs, ys = x[order].tolist(), y[order].tolist()
    hull: list[int] = []
    for k in range(len(xs)):
        while len(hull) >= 2:
            i, j = hull[-2], hull[-1]
            if (xs[j] - xs[i]) * (ys[k] - ys[i]) - (ys[j] - ys[i]) * (xs[k] - xs[i]) < 0:
                break
            hull.pop()
        hull.append(k)
    chosen: NDArray[np.intp] = order[np.array(hull, dtype=np.intp)]
    return chosen


def hull_mix(xs: FloatArray, idx: NDArray[np.intp], rate: float) -> tuple[int, int, float]:
    """Mix of two adjacent hull vertices reaching `rate` on the hull's x axis.

    A larger x selects more, so the vertex above the rate holds the lower threshold.
    """
    k = int(np.searchsorted(xs, rate, side="left"))
    if k >= len(xs):
        return (int(idx[-1]), int(idx[-1]), 0.0)
    if k == 0 or xs[k] == rate:
        return (int(idx[k]), int(idx[k]), 0.0)
    p_high = float((xs[k] - rate) / (xs[k] - xs[k - 1]))
    return (int(idx[k]), int(idx[k - 1]), p_high)


CHORD_POINTS = 4096


def chord_mix(
    x: FloatArray, y: FloatArray, hull: NDArray[np.intp], target: tuple[float, float]
) -> tuple[int, int, float]:
    """Two candidates whose mix lands closest to a point inside the hull (max-norm).

    One end is a hull vertex, the other any candidate (subsampled when there are many);
    exact up to the spacing of the candidates.
    """
    n = len(x)
    others = np.unique(
        np.concatenate([hull, np.linspace(0, n - 1, min(n, CHORD_POINTS)).astype(np.intp)])
    )
    ax, ay = x[hull][:, None], y[hull][:, None]
    dx, dy = x[others][None, :] - ax, y[others][None, :] - ay
    norm = dx * dx + dy * dy
    along = ((target[0] - ax) * dx + (target[1] - ay) * dy) / np.where(norm > 0, norm, 1.0)
    s = np.clip(along, 0.0, 1.0)
    error = np.maximum(np.abs(ax + s * dx - target[0]), np.abs(ay + s * dy - target[1]))
    i, j = np.unravel_index(int(np.argmin(error)), error.shape)
    a, b, weight = int(hull[i]), int(others[j]), float(s[i, j])
    return (a, b, weight) if a <= b else (b, a, 1.0 - weight)
