"""A small model server speaking the KServe v2 / Open Inference Protocol."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from guardproxy.demo.model import FEATURES, LogisticModel, load_model
from guardproxy.guards.exchange import dumps, loads

MODEL = web.AppKey("model", LogisticModel)


def build_model_app(
    model_name: str = "adult", model: LogisticModel | None = None
) -> web.Application:
    """An aiohttp app serving one binary classifier under /v2/models/<name>/."""
    app = web.Application()
    app[MODEL] = model or load_model()
    app.router.add_get("/v2/health/ready", _ready)
    app.router.add_get(f"/v2/models/{model_name}", _metadata)
    app.router.add_post(f"/v2/models/{model_name}/infer", _infer)
    return app


async def _ready(request: web.Request) -> web.Response:
    return web.json_response({"ready": True})


async def _metadata(request: web.Request) -> web.Response:
    inputs = [{"name": f, "datatype": "BYTES", "shape": [-1]} for f in FEATURES]
    outputs = [{"name": "score", "datatype": "FP32", "shape": [-1]}]
    return web.json_response(
        {"name": "adult", "platform": "guardproxy-demo", "inputs": inputs, "outputs": outputs}
    )


async def _infer(request: web.Request) -> web.Response:
    try:
        rows = v2_rows(loads(await request.read()))
    except (ValueError, KeyError, TypeError) as exc:
        return web.json_response({"error": f"bad inference request: {exc}"}, status=400)
    model = request.app[MODEL]
    scores = [model.score(row) for row in rows]
    body = {
        "model_name": "adult",
        "outputs": [
            {"name": "score", "shape": [len(scores)], "datatype": "FP32", "data": scores},
            {
                "name": "label",
                "shape": [len(scores)],
                "datatype": "INT64",
                "data": [int(s >= 0.5) for s in scores],
            },
        ],
    }
    return web.Response(body=dumps(body), content_type="application/json")


def v2_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of named features from a v2 request with one input per feature."""
    columns = {i["name"]: i["data"] for i in doc["inputs"]}
    missing = [f for f in FEATURES if f not in columns]
    if missing:
        raise KeyError(f"missing inputs {missing}")
    count = len(columns[FEATURES[0]])
    return [{f: columns[f][i] for f in FEATURES} for i in range(count)]


def v2_request(rows: list[dict[str, Any]], features: tuple[str, ...] = FEATURES) -> dict[str, Any]:
    """A v2 inference request for rows of raw Adult values."""
    inputs = []
    for name in features:
        values = [row[name] for row in rows]
        numeric = all(_is_number(v) for v in values)
        inputs.append(
            {
                "name": name,
                "shape": [len(rows)],
                "datatype": "FP32" if numeric else "BYTES",
                "data": [float(v) for v in values] if numeric else [str(v) for v in values],
            }
        )
    return {"inputs": inputs}


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
