"""COMPAS scoring for integration tests: ProPublica's rows, a model that echoes scores, a policy.

The rows are tests/data/compas_two_years.csv (see tests/data/README.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from guardproxy.settings import Settings
from guardproxy.testing import proxy_settings, serving
from tests import datasets

AUTH = {"Authorization": "Bearer feedback-secret"}


GROUPS = ("African-American", "Caucasian")


POLICY = """
region: default
models:
  - name: recidivism
    protocol: jsonpath
    routes: ["/score"]
    score: {path: "$.scores[*]"}
groups:
  attribute: {header: X-Group, trusted: true}
  values: [African-American, Caucasian]
decision:
  threshold: 0.45
fairness: {bins: 100}
"""


def scoring_app() -> web.Application:
    """A model server that answers the scores it was sent."""

    async def score(request: web.Request) -> web.Response:
        return web.json_response({"scores": (await request.json())["scores"]})

    app = web.Application()
    app.router.add_post("/score", score)
    return app


@asynccontextmanager
async def scoring_upstream() -> AsyncIterator[str]:
    """The scoring app on a free port."""
    async with serving(scoring_app()) as url:
        yield url


def policy_dir(tmp_path: Path, text: str = POLICY) -> Path:
    """A policy directory holding one default.yaml."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "default.yaml").write_text(text)
    return tmp_path


def compas_settings(upstream: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Proxy settings on the COMPAS policy, samples kept under tmp_path."""
    policies = policy_dir(tmp_path / "policies")
    return proxy_settings(upstream, policies=policies, samples_dir=tmp_path / "s", **overrides)


def compas_rows() -> list[tuple[str, float, int]]:
    """(race, decile / 10, two_year_recid) of ProPublica's filtered rows of the two groups."""
    rows = [r for r in datasets.compas_rows() if r["race"] in GROUPS]
    return [(r["race"], int(r["decile_score"]) / 10, int(r["two_year_recid"])) for r in rows]
