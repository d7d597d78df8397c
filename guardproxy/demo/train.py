"""Rebuild the demo model and data subset from the UCI Adult files (run once, offline)."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from guardproxy.demo.model import ADULT_COLUMNS, FEATURES, INDICATORS, NUMERIC, LogisticModel

SUBSET_COLUMNS = ("age", "education-num", "marital-status", "race", "sex", "capital-gain",
                  "capital-loss", "hours-per-week", "native-country", "income")  # fmt: skip


def read_adult(path: Path) -> list[dict[str, str]]:
    """Rows of adult.data / adult.test with the '.' of test labels removed."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for record in csv.reader(handle, skipinitialspace=True):
            if len(record) != len(ADULT_COLUMNS) or "?" in record:
                continue
            row = dict(zip(ADULT_COLUMNS, record, strict=True))
            row["income"] = "1" if row["income"].rstrip(".") == ">50K" else "0"
            rows.append(row)
    return rows


def fit(rows: list[dict[str, str]], steps: int = 3000, lr: float = 0.5) -> LogisticModel:
    """Plain gradient descent on the log loss."""
    raw = np.array([[float(r[c]) for c in NUMERIC] for r in rows])
    mean, scale = raw.mean(axis=0), raw.std(axis=0)
    flags = np.array([[float(r[c].strip() == v) for c, v in INDICATORS.items()] for r in rows])
    x = np.hstack([(raw - mean) / scale, flags])
    y = np.array([float(r["income"]) for r in rows])
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        w -= lr * x.T @ (p - y) / len(y)
        b -= lr * float(np.mean(p - y))
    return LogisticModel(
        dict(zip(NUMERIC, mean.tolist(), strict=True)),
        dict(zip(NUMERIC, scale.tolist(), strict=True)),
        dict(zip(FEATURES, w.tolist(), strict=True)),
        b,
    )


def main() -> None:
    """Fit on adult.data, write model.json and a 3,000-row subset of adult.test."""
    p = argparse.ArgumentParser()
    p.add_argument("--adult", type=Path, required=True, help="folder with adult.data, adult.test")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    p.add_argument("--rows", type=int, default=3000)
    args = p.parse_args()
    model = fit(read_adult(args.adult / "adult.data"))
    (args.out / "model.json").write_text(model.to_json() + "\n")
    test = read_adult(args.adult / "adult.test")
    rng = np.random.default_rng(7)
    chosen = sorted(rng.choice(len(test), size=args.rows, replace=False).tolist())
    with (args.out / "adult_subset.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUBSET_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(test[i] for i in chosen)


if __name__ == "__main__":
    main()
