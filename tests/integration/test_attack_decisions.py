"""A client cannot choose its decision or escape review by picking request ids or retrying."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import MappingProxyType

import aiohttp
from aiohttp import web

from guardproxy.policy.thresholds import ThresholdRule, ThresholdTable
from guardproxy.testing import RecordingModel, proxy_before
from tests.integration.attacks import INFER, applicant, guarded, post
from tests.state.conftest import REDIS_URL, drop_prefix

MIX = ThresholdRule(low=0.27, high=0.32, p_high=0.42)  # Hardt's mix for the Female group
NO_TOP_UP = """
region: default
models: [{name: adult}]
groups: {attribute: {input: sex}, values: [Female, Male]}
sampling: {rate: 0.5, min_per_group: 0, redact: []}
"""


def learned(proxy_runtime: object) -> None:
    """Publish a learned table with the randomized rule, as the calibration would."""
    # (region, model, version, group): the recording model names no version, nor does the path
    table = ThresholdTable("t-mix", MappingProxyType({("default", "adult", "", "Female"): MIX}))
    proxy_runtime.thresholds.publish(table)  # type: ignore[attr-defined]


async def test_retries_and_chosen_ids_never_change_a_randomized_decision(tmp_path: Path) -> None:
    model = RecordingModel(score=0.3)  # between the mix's thresholds: the draw decides
    async with guarded(tmp_path, model=model) as (proxy, _):
        learned(proxy.runtime)
        async with aiohttp.ClientSession() as session:
            decisions = set()
            for attempt in range(60):
                headers = {"X-Request-Id": f"pick-{attempt}"}
                code, answer_headers, _ = await post(
                    session, proxy.url + INFER, applicant(41), headers
                )
                assert code == 200
                decisions.add(answer_headers["X-Guard-Decision"])
                assert answer_headers["X-Guard-Threshold"] == "0.27|0.32@0.42"  # never the draw
            assert len(decisions) == 1
            others = set()
            for age in range(18, 90):  # other applicants: the rule does mix
                _, answer_headers, _ = await post(session, proxy.url + INFER, applicant(age))
                others.add(answer_headers["X-Guard-Decision"])
            assert others == {"0", "1"}


async def test_replicas_give_the_same_applicant_the_same_decision(tmp_path: Path) -> None:
    prefix = f"gp-test-{os.urandom(4).hex()}:"
    state = f"{REDIS_URL}?prefix={prefix}"
    try:
        async with (
            guarded(tmp_path / "a", model=RecordingModel(score=0.3), state=state) as (one, _),
            guarded(tmp_path / "b", model=RecordingModel(score=0.3), state=state) as (two, _),
        ):
            learned(one.runtime)
            learned(two.runtime)
            async with aiohttp.ClientSession() as session:
                for age in range(20, 60):
                    answers = [
                        (await post(session, p.url + INFER, applicant(age)))[1]["X-Guard-Decision"]
                        for p in (one, two)
                    ]
                    assert answers[0] == answers[1]
    finally:
        await drop_prefix(prefix)


async def test_a_client_cannot_pick_an_id_that_is_never_reviewed(tmp_path: Path) -> None:
    async with guarded(tmp_path, {"default.yaml": NO_TOP_UP}) as (proxy, _):
        offered = proxy.runtime.samples
        async with aiohttp.ClientSession() as session:
            for body_index, age in enumerate((33, 34, 35, 36)):
                before = offered.offered
                for attempt in range(25):
                    headers = {"X-Request-Id": f"dodge-{body_index}-{attempt}"}
                    await post(session, proxy.url + INFER, applicant(age), headers)
                assert offered.offered - before in (0, 25)  # the body decides: all or none


PER_GROUP = """
region: default
models: [{name: adult}]
groups: {attribute: {input: sex}, values: [Female, Male]}
decision: {threshold: 0.5, per_group: {Male: 0.9}}
"""


async def test_a_group_the_guards_and_the_model_could_read_differently_is_refused(
    tmp_path: Path,
) -> None:
    # Given twice, the guards read one value of `sex` and a model may read the other; given
    # for two rows of a one-row request, the decision would be skipped (fail_open): either
    # way the client, not the policy, would choose the threshold of its row.
    twice = applicant(41, "Male")
    twice["inputs"].insert(
        0, {"name": "sex", "shape": [1], "datatype": "BYTES", "data": ["Female"]}
    )
    two_groups = applicant(41, "Male")
    two_groups["inputs"][1] = {
        "name": "sex",
        "shape": [2],
        "datatype": "BYTES",
        "data": ["Male"] * 2,
    }
    model = RecordingModel(score=0.7)
    async with guarded(tmp_path, {"default.yaml": PER_GROUP}, model) as (proxy, _):
        async with aiohttp.ClientSession() as session:
            code, _, doc = await post(session, proxy.url + INFER, twice)
            assert (code, doc["error"]) == (400, "input 'sex' is given more than once")
            assert len(model.bodies) == 0  # refused before the model was asked
            code, headers, doc = await post(session, proxy.url + INFER, two_groups)
            assert (code, doc["error"]) == (400, "the request names 2 groups for 1 scores")
            assert "X-Guard-Decision" not in headers
            code, headers, _ = await post(session, proxy.url + INFER, applicant(41, "Male"))
            assert (code, headers["X-Guard-Decision"]) == (200, "0")  # 0.7 under Male's 0.9
        assert proxy.runtime.status()["requests"]["refused"] == {"400": 2}


async def test_json_in_another_encoding_than_utf8_is_refused(tmp_path: Path) -> None:
    # Python's json.loads, behind many model servers, reads these; the guards do not, and
    # would give the row the "other" group's threshold where the model scores a Male.
    text = json.dumps(applicant(41, "Male"))
    bodies = [
        b"\xef\xbb\xbf" + text.encode(),
        text.encode("utf-16"),
        text.encode("utf-16-le"),
        text.encode("utf-32"),
    ]
    model = RecordingModel(score=0.7)
    async with guarded(tmp_path, {"default.yaml": PER_GROUP}, model) as (proxy, _):
        async with aiohttp.ClientSession() as session:
            for body in bodies:
                code, _, doc = await post(session, proxy.url + INFER, body)
                assert code == 400
                assert doc["error"] == (
                    "a guarded request body must be UTF-8 JSON without a byte order mark"
                )
            assert len(model.bodies) == 0
            code, headers, _ = await post(session, proxy.url + INFER, text.encode())
            assert (code, headers["X-Guard-Decision"]) == (200, "0")


def twice(key: str) -> bytes:
    """A Male applicant whose JSON names `key` again, for Female, where orjson reads it."""
    female = '{"name":"sex","shape":[1],"datatype":"BYTES","data":["Female"]}'
    if key == "data":
        sex = '{"name":"sex","shape":[1],"datatype":"BYTES","data":["Male"],"data":["Female"]}'
        return ('{"inputs":[' + sex + "]}").encode()
    male = '{"name":"sex","shape":[1],"datatype":"BYTES","data":["Male"]}'
    return ('{"inputs":[' + male + '],"inputs":[' + female + "]}").encode()


def binary_twice() -> tuple[bytes, str]:
    """The same in the binary extension: two `inputs` in the JSON header."""
    male, female = b"\x04\x00\x00\x00Male", b"\x06\x00\x00\x00Female"
    sex = '{"name":"sex","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":%d}}'
    header = '{"inputs":[' + sex % len(male) + '],"inputs":[' + sex % len(female) + "]}"
    return header.encode() + male + female, str(len(header))


async def test_a_request_that_names_a_key_twice_is_refused(tmp_path: Path) -> None:
    # RapidJSON (Triton) and others keep the first of a repeated key, orjson the last: the
    # model would score a Male at the threshold the guards chose for a Female.
    model = RecordingModel(score=0.7)
    async with guarded(tmp_path, {"default.yaml": PER_GROUP}, model) as (proxy, _):
        async with aiohttp.ClientSession() as session:
            for body in (twice("data"), twice("inputs")):
                code, headers, doc = await post(session, proxy.url + INFER, body)
                assert code == 400 and "X-Guard-Decision" not in headers
                assert doc["error"] == "a JSON object of the request names a key more than once"
            body, length = binary_twice()
            sent = {"Inference-Header-Content-Length": length}
            code, _, doc = await post(session, proxy.url + INFER, body, sent)
            assert (code, doc["error"]) == (
                400,
                "a JSON object of the request names a key more than once",
            )
            assert len(model.bodies) == 0  # refused before the model was asked
        assert proxy.runtime.status()["requests"]["refused"] == {"400": 3}


MALE = '{"name":"sex","shape":[1],"datatype":"BYTES","data":["Male"]}'
UNREADABLE = {  # each read by Python's json.loads, behind many model servers; not by orjson
    "NaN": '{"parameters":{"pad":NaN},"inputs":[' + MALE + "]}",
    "1e400": '{"parameters":{"pad":1e400},"inputs":[' + MALE + "]}",
    "a lone surrogate": '{"parameters":{"pad":"\\udc00"},"inputs":[' + MALE + "]}",
    "1,100 levels": '{"parameters":{"pad":'
    + "[" * 1100
    + "]" * 1100
    + '},"inputs":['
    + MALE
    + "]}",
}
STRICT = "region: strict\nextends: default\ndecision: {on_error: fail_closed}\n"


async def test_a_request_the_guards_cannot_read_is_refused_whatever_on_error_says(
    tmp_path: Path,
) -> None:
    # Passed on, the model would score a Male at the "other" group's threshold.
    model = RecordingModel(score=0.7)
    policies = {"default.yaml": PER_GROUP, "strict.yaml": STRICT}
    async with guarded(tmp_path, policies, model, trust_region_header="X-Region") as (proxy, _):
        async with aiohttp.ClientSession() as session:
            for region in ("default", "strict"):
                for body in UNREADABLE.values():
                    sent = {"X-Region": region}
                    code, headers, doc = await post(session, proxy.url + INFER, body.encode(), sent)
                    assert code == 400 and "X-Guard-Decision" not in headers
                    assert doc["error"].startswith("the guards cannot read the request: ")
            assert len(model.bodies) == 0  # refused before the model was asked
        assert proxy.runtime.status()["requests"]["refused"] == {"400": 8}


ANSWER = b'{"outputs":[{"name":"score","shape":[1],"datatype":"FP32","data":[0.7]}]}'
TYPES = {  # what the model says its answer is: Content-Type values, in order
    "plain": [b"text/plain"],
    "untyped": [],
    "octets": [b"application/octet-stream"],
    "twice, plain first": [b"text/plain", b"application/json"],
    "not JSON after all": [b"text/plain"],
}


def typed_model(kind: str) -> web.Application:
    """A model answering a score under the given Content-Type headers."""

    async def infer(request: web.Request) -> web.StreamResponse:
        body = b"model output" if kind == "not JSON after all" else ANSWER
        response = web.StreamResponse()
        response.headers.popall("Content-Type", None)
        for value in TYPES[kind]:
            response.headers.add("Content-Type", value.decode())
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body)
        return response

    app = web.Application()
    app.router.add_post(INFER, infer)
    return app


async def test_an_answer_of_any_type_is_guarded_as_json(tmp_path: Path) -> None:
    # The openai SDK, and others, read such an answer as JSON: passed unguarded, its
    # client would get a score no decision was made on, fail_closed or not.
    for kind in TYPES:
        policies = {"default.yaml": PER_GROUP, "strict.yaml": STRICT}
        async with proxy_before(typed_model(kind), tmp_path / kind, policies,
                                trust_region_header="X-Region") as proxy:  # fmt: skip
            async with aiohttp.ClientSession() as session:
                url, body = proxy.url + INFER, applicant(41, "Male")
                code, headers, _ = await post(session, url, body, {"X-Region": "strict"})
                if kind == "not JSON after all":  # the guard's on_error: fail_closed
                    assert code == 502
                else:
                    assert (code, headers["X-Guard-Decision"]) == (200, "0"), kind
