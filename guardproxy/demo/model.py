"""The demo's model: logistic regression over UCI Adult features, pure Python at serve time."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

NUMERIC = ("age", "education-num", "hours-per-week", "capital-gain", "capital-loss")
INDICATORS = {
    "sex": "Male",
    "marital-status": "Married-civ-spouse",
    "race": "White",
}
FEATURES = NUMERIC + tuple(INDICATORS)
ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
    "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
    "hours-per-week", "native-country", "income",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LogisticModel:
    """Weights over standardised numeric columns and 0/1 indicators."""

    mean: Mapping[str, float]
    scale: Mapping[str, float]
    weights: Mapping[str, float]
    bias: float

    def vector(self, row: Mapping[str, Any]) -> list[float]:
        """The model's inputs for one row of raw Adult values."""
        numeric = [(float(row[c]) - self.mean[c]) / self.scale[c] for c in NUMERIC]
        flags = [1.0 if str(row[c]).strip() == v else 0.0 for c, v in INDICATORS.items()]
        return numeric + flags

    def score(self, row: Mapping[str, Any]) -> float:
        """P(income > 50K) for one row."""
        z = self.bias + sum(w * x for w, x in zip(self._w(), self.vector(row), strict=True))
        return 1.0 / (1.0 + math.exp(-z))

    def _w(self) -> list[float]:
        return [self.weights[f] for f in FEATURES]

    def to_json(self) -> str:
        """Serialise the fitted model."""
        return json.dumps(
            {"mean": self.mean, "scale": self.scale, "weights": self.weights, "bias": self.bias},
            indent=1,
        )


def load_model() -> LogisticModel:
    """The bundled fitted model."""
    text = resources.files("guardproxy.demo").joinpath("data/model.json").read_text()
    doc = json.loads(text)
    return LogisticModel(doc["mean"], doc["scale"], doc["weights"], float(doc["bias"]))


def adult_rows() -> Iterator[dict[str, str]]:
    """The bundled Adult subset (see data/README.md), one dict per row, label in `income`."""
    source = resources.files("guardproxy.demo").joinpath("data/adult_subset.csv")
    with source.open("r", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)
