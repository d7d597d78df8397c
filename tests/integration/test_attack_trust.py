"""A client cannot choose its policy: region and group headers count only when trusted."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from guardproxy.policy.loader import PolicyError, validate_directory
from guardproxy.testing import proxy_settings, running_proxy, write_policies
from tests.integration.attacks import INFER, applicant, guarded, post, status

REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"
REGIONS = {p.name: p.read_text() for p in REPO_POLICIES.glob("*.yaml")}
HEADER_GROUP = """
region: default
models:
  - {name: adult}
  - name: tagger
    routes: [/tag]
    groups: {attribute: {header: X-Group TRUSTED}, values: [a, b]}
"""


async def test_region_header_is_ignored_unless_the_operator_trusts_it(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        async with guarded(tmp_path / "pod", REGIONS, region="id") as (proxy, _):
            _, headers, _ = await post(session, proxy.url + INFER, applicant(), {"X-Region": "sg"})
            assert headers["X-Guard-Region"] == "id"  # the pod's region, whatever was asked
        trusting = {"region": "id", "trust_region_header": "X-Region"}
        async with guarded(tmp_path / "gw", REGIONS, **trusting) as (proxy, _):
            _, headers, _ = await post(session, proxy.url + INFER, applicant(), {"X-Region": "sg"})
            assert headers["X-Guard-Region"] == "sg"


async def test_a_trusted_region_header_given_twice_is_refused(tmp_path: Path) -> None:
    # A gateway that appends its own header leaves the client's first: neither may choose.
    trusting = {"region": "id", "trust_region_header": "X-Region"}
    async with aiohttp.ClientSession() as session:
        async with guarded(tmp_path / "gw", REGIONS, **trusting) as (proxy, _):
            twice = CIMultiDict([("X-Region", "th"), ("X-Region", "sg")])
            for headers in (twice, {"X-Region": "th, sg"}):
                code, _, body = await post(session, proxy.url + INFER, applicant(), headers)
                assert code == 400 and "region header is given more than once" in body["error"]
            assert proxy.runtime.status()["requests"]["refused"] == {"400": 2}


async def test_a_group_header_the_operator_does_not_trust_is_refused(tmp_path: Path) -> None:
    untrusted = HEADER_GROUP.replace(" TRUSTED", "")
    directory = write_policies(tmp_path / "policies", {"default.yaml": untrusted})
    problems = validate_directory(directory)
    assert len(problems) == 1 and problems[0].message.startswith("model 'tagger': ")
    assert "X-Group' is set by the client" in problems[0].message
    assert "trusted: true" in problems[0].message
    trusted = HEADER_GROUP.replace(" TRUSTED", ", trusted: true")
    assert validate_directory(write_policies(tmp_path / "trusted", {"default.yaml": trusted})) == []
    with pytest.raises(PolicyError):
        async with running_proxy(proxy_settings("http://127.0.0.1:9", policies=directory)):
            pass


async def test_forwarded_headers_are_replaced_unless_trusted(tmp_path: Path) -> None:
    forged = {
        "X-Forwarded-For": "10.0.0.1",
        "X-Forwarded-Host": "bank.example",
        "Forwarded": "for=1",
    }
    async with aiohttp.ClientSession() as session:
        for trusted, expected_for in ((False, "127.0.0.1"), (True, "10.0.0.1, 127.0.0.1")):
            async with guarded(tmp_path / str(trusted), trust_forwarded=trusted) as (proxy, model):
                await post(session, proxy.url + INFER, applicant(), forged)
                seen = model.headers[-1]
                assert seen["X-Forwarded-For"] == expected_for
                assert (seen["X-Forwarded-Host"] == "bank.example") is trusted
                assert ("Forwarded" in seen) is trusted


async def test_odd_request_ids_are_replaced_echoed_and_counted(tmp_path: Path) -> None:
    async with guarded(tmp_path) as (proxy, model), aiohttp.ClientSession() as session:
        for odd in ("x" * 129, "a b", "<script>", "id\u00e9"):
            code, headers, _ = await post(
                session, proxy.url + INFER, applicant(), {"X-Request-Id": odd}
            )
            assert (
                code == 200
                and headers["X-Request-Id"] != odd
                and len(headers["X-Request-Id"]) == 32
            )
            assert model.headers[-1]["X-Request-Id"] == headers["X-Request-Id"]
        _, headers, _ = await post(
            session, proxy.url + INFER, applicant(), {"X-Request-Id": "ok-1:2"}
        )
        assert headers["X-Request-Id"] == "ok-1:2"
        assert (await status(proxy))["requests"]["request_ids_replaced"] == 4
