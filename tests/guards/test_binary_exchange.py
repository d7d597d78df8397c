"""The guard chain over binary tensor bodies decides as it does over the same rows in JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from guardproxy.guards.base import GuardChain
from guardproxy.guards.chain import GuardContext, stream_terms
from guardproxy.guards.exchange import Exchange, TooManyRows
from guardproxy.payloads.binary import BinaryBody, decode_response, encode
from guardproxy.payloads.binary_bodies import BinaryBodies
from guardproxy.policy.models import ModelPolicy
from guardproxy.policy.thresholds import Snapshot, ThresholdRule, ThresholdTable

from .exchanges import chain, exchange, policy

SEXES = ["female", "male", "female", "nonbinary"]
AGES = [20, 45, 70, 33]
SCORES = [0.25, 0.5, 0.75, 0.375]  # exact in FP32, so both encodings carry the same values
LABELS = [["cat", "dog"], ["gorilla", "cat"], ["dog", ""], ["ape", "gorilla"]]


def request() -> dict[str, Any]:
    n = len(SEXES)
    return {
        "inputs": [
            {"name": "pixels", "shape": [n, 3], "datatype": "FP32", "data": [0.5] * (3 * n)},
            {"name": "age", "shape": [n], "datatype": "INT64", "data": AGES},
            {"name": "sex", "shape": [n], "datatype": "BYTES", "data": SEXES},
        ]
    }


def answer() -> dict[str, Any]:
    n = len(SCORES)
    return {
        "model_name": "adult",
        "model_version": "3",
        "outputs": [
            {"name": "score", "shape": [n], "datatype": "FP32", "data": SCORES},
            {"name": "tags", "shape": [n, 2], "datatype": "BYTES",
             "data": [t for row in LABELS for t in row]},
            {"name": "label", "shape": [n], "datatype": "INT64", "data": [0] * n},
        ],
    }  # fmt: skip


def spec(**sections: Any) -> ModelPolicy:
    base: dict[str, Any] = {
        "groups": {"attribute": {"input": "sex"}, "values": ["female", "male"]},
        "decision": {"threshold": 0.5, "per_group": {"female": 0.3}},
        "labels": {"deny": ["gorilla"], "output": "tags"},
        "drift": {"signals": ["score", {"input": "age"}]},
    }
    return policy({"score": {"output": "score"}}, **{**base, **sections})


def binary_exchange(guards: GuardChain, raw_answer: bytes | None = None) -> Exchange:
    """The same request and answer as `exchange(request(), answer())`, every tensor binary."""
    sent = encode(BinaryBody(request(), "inputs"))
    answered = encode(BinaryBody(answer(), "outputs"))
    ex = exchange(request(), raw_response=raw_answer or answered.body)
    ex.body = sent.body
    ex.response_type = b"application/octet-stream"
    assert guards.binary is not None
    ex.binary = BinaryBodies(guards.binary, str(sent.header_length))
    ex.binary.response = str(answered.header_length)
    return ex


async def run(guards: GuardChain, ex: Exchange) -> Exchange:
    await guards.on_request(ex)
    await guards.on_response(ex)
    return ex


def outputs(ex: Exchange) -> dict[str, Any]:
    assert ex.binary is not None and ex.binary.encoded is not None
    body, length = ex.binary.encoded
    return {t["name"]: t for t in decode_response(body, length).doc["outputs"]}


@pytest.mark.parametrize("action", ["suppress", "block", "flag"])
async def test_binary_and_json_rows_get_the_same_verdicts_features_and_flags(action: str) -> None:
    guards = chain(spec(labels={"deny": ["gorilla"], "output": "tags", "action": action}))
    plain = await run(guards, exchange(request(), answer()))
    binary = await run(guards, binary_exchange(guards))
    assert binary.verdicts == plain.verdicts
    assert [v.decision for v in binary.verdicts] == [0, 1, 1, 0]
    assert binary.groups == ["female", "male", "female", "other"]
    assert guards.features is not None
    assert guards.features(binary, 4) == guards.features(plain, 4) == (tuple(AGES),)
    assert (binary.flags, binary.annotations) == (plain.flags, plain.annotations)
    assert binary.version == plain.version == "3"
    assert (binary.reply is None) == (plain.reply is None) == (action != "block")


async def test_only_the_read_inputs_are_decoded() -> None:
    guards = chain(spec())
    ex = await run(guards, binary_exchange(guards))
    inputs = {t["name"]: t for t in ex.request_json()["inputs"]}
    assert "data" not in inputs["pixels"]
    assert inputs["sex"]["data"] == SEXES and inputs["age"]["data"] == AGES


async def test_a_randomized_rule_draws_from_every_input_the_same_as_json() -> None:
    rule = ThresholdRule(low=0.2, high=0.8, p_high=0.5)
    rules = {("sg", "adult", "3", g): rule for g in ("female", "male", "other")}
    ctx = GuardContext(thresholds=Snapshot(ThresholdTable("r", rules)))
    adapting = {"threshold": 0.5, "per_group": {"female": 0.3}, "adapt": {}}
    guards = chain(spec(labels={}, decision=adapting), ctx)
    plain = await run(guards, exchange(request(), answer()))
    binary = await run(guards, binary_exchange(guards))
    assert binary.verdicts == plain.verdicts
    assert all(t in (0.2, 0.8) for t in (v.threshold for v in binary.verdicts))
    assert "data" in binary.request_json()["inputs"][0]  # the subject is the whole row


async def test_suppress_rewrites_only_the_labels_tensor() -> None:
    guards = chain(spec())
    ex = await run(guards, binary_exchange(guards))
    assert ex.response_changed
    out = outputs(ex)
    assert out["tags"]["data"] == ["cat", "dog", "cat", "", "dog", "", "ape", ""]
    assert out["score"]["data"] == SCORES
    assert ex.final_response_body() == ex.binary.encoded.body  # type: ignore[union-attr]


async def test_annotate_body_and_rewrite_write_binary_outputs() -> None:
    guards = chain(spec(labels={}, decision={"per_group": {"female": 0.3}, "annotate": "body"}))
    out = outputs(await run(guards, binary_exchange(guards)))
    assert out["guardproxy"]["data"] == [0, 1, 1, 0]
    assert out["guardproxy_threshold"]["data"] == [0.30000001192092896, 0.5, 0.30000001192092896,
                                                   0.5]  # fmt: skip
    guards = chain(spec(labels={}, decision={"annotate": "rewrite", "label_output": "label"}))
    assert outputs(await run(guards, binary_exchange(guards)))["label"]["data"] == [0, 1, 1, 0]


async def test_an_untouched_answer_keeps_its_bytes() -> None:
    guards = chain(spec(labels={}))
    ex = binary_exchange(guards)
    raw = ex.response_body
    await run(guards, ex)
    assert not ex.response_changed and ex.final_response_body() is raw


@pytest.mark.parametrize("on_error", ["fail_open", "fail_closed"])
async def test_malformed_binary_framing_follows_on_error(on_error: str) -> None:
    guards = chain(spec(labels={}, decision={"on_error": on_error}))
    ex = binary_exchange(guards)
    ex.binary.response = str(len(ex.response_body) + 1)  # type: ignore[union-attr]
    raw = ex.response_body
    await run(guards, ex)
    assert ex.unscored and ex.annotations["X-Guard-Decision"] == "unscored"
    assert ex.binary is not None and ex.binary.malformed
    assert guards.errors == {"decision": 1}
    if on_error == "fail_open":
        assert ex.reply is None and ex.final_response_body() is raw
    else:
        assert ex.reply is not None and ex.reply.status == 502
        assert "binary output" in ex.reply.error


async def test_a_streamed_answer_is_unscored_and_fail_closed_refuses_it() -> None:
    spec_open = policy({"protocol": "openai", "score": {"path": "$.score"}})
    guards = chain(spec_open)
    ex = exchange({"stream": True})
    ex.response_body, ex.streamed = b"", True
    await guards.check_response(ex)
    assert ex.unscored and ex.annotations["X-Guard-Decision"] == "unscored" and ex.reply is None
    closed = chain(policy({"protocol": "openai", "score": {"path": "$.score"}},
                          decision={"on_error": "fail_closed"}))  # fmt: skip
    ex = exchange({"stream": True})
    ex.response_body, ex.streamed = b"", True
    await closed.check_response(ex)
    assert ex.reply is not None and "carries no score" in ex.reply.error


def test_stream_terms_follow_the_label_action() -> None:
    def terms(action: str) -> Any:
        labels = {"deny": ["gorilla"], "action": action}
        return stream_terms(policy({"protocol": "openai"}, labels=labels))

    assert terms("flag").scan("", "a gorilla.")[1][0].action == "flag"
    assert terms("block").scan("", "a gorilla.")[1][0].action == "deny"
    assert terms("suppress").scan("", "a gorilla.")[1][0].action == "deny"
    assert stream_terms(policy({"protocol": "openai"})) is None
    assert stream_terms(policy({}, labels={"deny": ["gorilla"]})) is None  # not a chat model


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
@pytest.mark.parametrize("names", [{}, {"score": {"output": "score"}}])
async def test_an_answer_over_the_row_limit_is_refused_before_it_is_decoded(
    datatype: str, names: dict[str, Any]
) -> None:
    # 4M rows took the loop 1.6 s (FP32) and 2.7 s (BYTES) to decode, then a 413 or unscored.
    rows = 5
    tensor = {"name": "score", "shape": [rows], "datatype": datatype,
              "parameters": {"binary_data_size": rows * 4}}  # fmt: skip
    header = json.dumps({"outputs": [tensor]}).encode()
    guards = chain(policy(names), GuardContext(max_rows=4))
    ex = binary_exchange(guards, header + b"\xff" * (rows * 4))  # not BYTES: decoded, it fails
    assert ex.binary is not None
    ex.binary.response = str(len(header))
    await guards.on_request(ex)
    with pytest.raises(TooManyRows, match="a batch of 5 rows is over the limit of 4"):
        await guards.on_response(ex)
    assert guards.errors == {}  # refused as the JSON answer is, not a guard's failure
