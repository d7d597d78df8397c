"""Two income models for a real MLServer, trained on the bundled Adult subset.

`python -m guardproxy.demo.mlserver DIR` writes an MLServer model repository with
`income-v1` (a logistic regression) and `income-v2` (a retrained candidate), each a
scikit-learn pipeline that takes the named columns of an Open Inference Protocol request
(`age`, `education-num`, `hours-per-week`, `sex`) as a pandas frame. Needs
`pip install mlserver mlserver-sklearn` (which bring scikit-learn and pandas).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from guardproxy.demo.model import adult_rows

COLUMNS = ("age", "education-num", "hours-per-week", "sex")
MODELS = {"income-v1": 1.0, "income-v2": 0.05}  # name -> regularisation C


def pipeline(c: float) -> Any:
    """Numbers scaled, sex one-hot encoded, then a logistic regression."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    columns = ColumnTransformer(
        [("numbers", StandardScaler(), list(COLUMNS[:3])), ("sex", OneHotEncoder(), ["sex"])]
    )
    return make_pipeline(columns, LogisticRegression(C=c, max_iter=1000))


def write_repository(folder: Path, ports: dict[str, int] | None = None) -> list[str]:
    """Train both models on the Adult subset and write them with MLServer's settings.

    The server's settings.json runs the models in its own process; `ports` adds to it.
    """
    import joblib
    import pandas as pd

    rows = list(adult_rows())
    frame = pd.DataFrame({c: [r[c] for r in rows] for c in COLUMNS}).astype(
        {"age": "int64", "education-num": "int64", "hours-per-week": "int64"}
    )
    labels = [int(r["income"]) for r in rows]
    for name, c in MODELS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        joblib.dump(pipeline(c).fit(frame, labels), folder / name / "model.joblib")
        settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "1"},
        }
        (folder / name / "model-settings.json").write_text(json.dumps(settings, indent=1))
    # Models load in the server's own process: MLServer 1.7's pool workers call
    # asyncio.get_event_loop() at start under uvloop's policy, which uvloop 0.23 answers with
    # a RuntimeError, so each worker died and no model loaded.
    server = {"parallel_workers": 0, **(ports or {})}
    (folder / "settings.json").write_text(json.dumps(server))
    return list(MODELS)


def infer_request(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """An OIP request of named columns, decoded by MLServer as a pandas frame."""
    n = len(rows)

    def column(name: str, datatype: str, cast: Any) -> dict[str, Any]:
        data = [cast(r[name]) for r in rows]
        return {"name": name, "shape": [n], "datatype": datatype, "data": data}

    return {
        "parameters": {"content_type": "pd"},
        "inputs": [
            *(column(c, "INT64", int) for c in COLUMNS[:3]),
            column("sex", "BYTES", str),
        ],
        "outputs": [{"name": "predict_proba"}],
    }


def main() -> None:
    """Write the repository named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path)
    folder = parser.parse_args().directory
    names = write_repository(folder)
    print(f"wrote {', '.join(names)} into {folder}; run: mlserver start {folder}")


if __name__ == "__main__":
    main()
