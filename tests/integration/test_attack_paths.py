"""A guard cannot be walked around by spelling its path another way."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from guardproxy.testing import RecordingModel
from tests.integration.attacks import applicant, guarded, post

GUARDED_SPELLINGS = [
    "/v2/models/adult/versions/3/infer",  # the versioned OIP path
    "/v2/models/adult/infer/",
    "//v2/models/adult/infer",
    "/v2/models/adult/./infer",
    "/v2/models/x/../adult/infer",
    "/v2/%6Dodels/adult/%69nfer",
    "/v2/models/adult/infer?x=1",
]


@pytest.mark.parametrize("path", GUARDED_SPELLINGS)
async def test_every_spelling_of_a_guarded_path_is_guarded(path: str, tmp_path: Path) -> None:
    model = RecordingModel(lenient=True)  # scores whatever path it is sent
    async with guarded(tmp_path, model=model) as (proxy, _), aiohttp.ClientSession() as session:
        raw = URL(proxy.url + path, encoded=True)  # sent as spelled, not tidied by the client
        code, headers, _ = await post(session, raw, applicant())
        assert code == 200 and headers["X-Guard-Decision"] == "1"  # the guards read the answer
        assert proxy.runtime.proxy.counts.guarded == 1
    assert model.paths == [path]  # forwarded as the client spelled it


@pytest.mark.parametrize(
    "path", ["/v2/models/adult%2Finfer", "/v2/models%2fadult/infer", "/v2/models/adult%5Cinfer"]
)
async def test_encoded_separators_in_a_guarded_path_are_refused(path: str, tmp_path: Path) -> None:
    async with guarded(tmp_path) as (proxy, model), aiohttp.ClientSession() as session:
        url = URL(proxy.url + path, encoded=True)
        code, _, answer = await post(session, url, applicant(), {"X-Request-Id": "enc"})
    assert code == 400 and answer["request_id"] == "enc" and "ambiguous" in answer["error"]
    assert model.bodies == []


async def test_other_paths_still_pass_through_unguarded(tmp_path: Path) -> None:
    async with guarded(tmp_path) as (proxy, _), aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/v2/models/adult/ready") as response:
            assert response.status == 404 and "X-Guard-Policy" not in response.headers
        assert proxy.runtime.proxy.counts.guarded == 0


TWO_MODELS = """
region: default
groups: {attribute: {input: sex}, values: [Female, Male]}
models:
  - {name: adult}
  - {name: fraud, decision: {threshold: 0.9}}
"""


@pytest.mark.parametrize(
    ("path", "name", "decision"),
    [
        ("/v2/models/adult/../fraud/infer", "fraud", "0"),
        ("/v2/models/%66raud/versions/2/infer", "fraud", "0"),
        ("//v2/models/adult//infer/", "adult", "1"),
    ],
)
async def test_a_spelled_path_gets_the_policy_of_the_model_it_reaches(
    path: str, name: str, decision: str, tmp_path: Path
) -> None:
    model = RecordingModel(score=0.7, lenient=True)
    policies = {"default.yaml": TWO_MODELS}
    async with (
        guarded(tmp_path, policies, model) as (proxy, _),
        aiohttp.ClientSession() as session,
    ):
        code, headers, _ = await post(session, URL(proxy.url + path, encoded=True), applicant())
    assert code == 200 and headers["X-Guard-Model"] == name
    assert headers["X-Guard-Decision"] == decision  # fraud's 0.9, not adult's 0.5
