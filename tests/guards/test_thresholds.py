"""DecisionGuard: thresholds in force, annotate modes, determinism, failure modes."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from guardproxy.guards.base import GuardChain
from guardproxy.guards.chain import GuardContext
from guardproxy.guards.exchange import (
    AmbiguousRequest,
    Exchange,
    TooManyRows,
    UnreadableRequest,
    loads,
)
from guardproxy.guards.thresholds import HEADER_ROWS
from guardproxy.policy.thresholds import Snapshot, ThresholdRule, ThresholdTable
from tests.guards.exchanges import chain, exchange, policy, v2_answer, v2_request

GROUPS = {"values": ["female", "male"], "attribute": {"input": "sex"}}
ADAPT = {"adapt": {}}  # learned thresholds count only while the policy adapts


def chain_for(decision: dict[str, Any], ctx: GuardContext | None = None) -> GuardChain:
    sections = {
        "groups": GROUPS,
        "model": {"score": {"output": "score"}},
        "decision": {"threshold": 0.5, "per_group": {"female": 0.4}, **decision},
    }
    return chain(policy(**sections), ctx or GuardContext(), "v1")


async def run(chain: GuardChain, ex: Exchange) -> Exchange:
    await chain.on_request(ex)
    await chain.on_response(ex)
    return ex


async def test_headers_mode_leaves_body_bytes_untouched() -> None:
    ex = exchange(v2_request("female", "male", "other"), v2_answer(0.45, 0.45, 0.6))
    original = ex.response_body
    await run(chain_for({}), ex)
    assert ex.annotations["X-Guard-Decision"] == "1,0,1"
    assert ex.annotations["X-Guard-Threshold"] == "0.4,0.5,0.5"
    assert ex.annotations["X-Guard-Threshold-Version"] == "static"
    assert not ex.response_changed and ex.final_response_body() is original
    assert [(v.group, v.decision) for v in ex.verdicts] == [
        ("female", 1),
        ("male", 0),
        ("other", 1),
    ]


async def test_body_mode_appends_guardproxy_outputs() -> None:
    ex = await run(chain_for({"annotate": "body"}), exchange(v2_request("male"), v2_answer(0.7)))
    body = loads(ex.final_response_body())
    assert body["outputs"][2] == {
        "name": "guardproxy",
        "shape": [1],
        "datatype": "INT64",
        "data": [1],
    }
    assert body["outputs"][3]["data"] == [0.5]


async def test_rewrite_mode_replaces_predict() -> None:
    ex = exchange(v2_request("female", "male"), v2_answer(0.42, 0.42))
    await run(chain_for({"annotate": "rewrite"}), ex)
    assert loads(ex.final_response_body())["outputs"][1]["data"] == [1, 0]


def batch(rows: int) -> Exchange:
    """An exchange of `rows` rows, alternately female (decided 1) and male (decided 0)."""
    sexes = ["female", "male"] * (rows // 2) + ["female"] * (rows % 2)
    return exchange(v2_request(*sexes), v2_answer(*[0.45] * rows))


async def test_the_headers_carry_the_rows_of_a_batch_up_to_a_bound() -> None:
    ex = await run(chain_for({}), batch(HEADER_ROWS))
    assert ex.annotations["X-Guard-Decision"] == ",".join(["1", "0"] * (HEADER_ROWS // 2))
    assert ex.annotations["X-Guard-Threshold"].count(",") == HEADER_ROWS - 1
    assert not ex.response_changed


@pytest.mark.parametrize("mode", ["headers", "body", "rewrite"])
async def test_past_the_bound_decisions_and_thresholds_go_in_the_body(mode: str) -> None:
    rows = HEADER_ROWS + 1
    ex = await run(chain_for({"annotate": mode}), batch(rows))
    assert ex.annotations["X-Guard-Decision"] == ex.annotations["X-Guard-Threshold"] == "body"
    outputs = {t["name"]: t["data"] for t in loads(ex.final_response_body())["outputs"]}
    expected = ([1, 0] * rows)[:rows]
    assert outputs["guardproxy"] == expected
    assert outputs["guardproxy_threshold"] == ([0.4, 0.5] * rows)[:rows]
    assert outputs["predict"] == (expected if mode == "rewrite" else [0] * rows)


async def test_an_answer_with_no_room_for_them_keeps_them_in_the_headers() -> None:
    rows = HEADER_ROWS + 1
    spec = policy({"protocol": "jsonpath", "score": {"path": "$[*].score"}})
    answer = [{"score": 0.7}] * rows  # a JSON list: nowhere to add the decisions
    ex = await run(chain(spec), exchange({"rows": rows}, answer))
    assert ex.annotations["X-Guard-Decision"] == ",".join(["1"] * rows)
    assert not ex.response_changed


async def test_a_request_over_the_row_limit_is_refused_before_the_model_is_asked() -> None:
    guards = chain_for({"on_error": "fail_open"}, GuardContext(max_rows=4))
    ex = batch(5)
    with pytest.raises(TooManyRows, match="a batch of 5 rows is over the limit of 4") as raised:
        await guards.on_request(ex)
    assert raised.value.status == 413  # the client's request refused, not a guard failure
    assert ex.groups == [] and guards.errors == {}
    assert (await run(guards, batch(4))).reply is None


async def test_an_answer_over_the_row_limit_is_refused() -> None:
    # No group guard reads the request: its rows are counted in the answer.
    spec = policy(model={"score": {"output": "score"}}, decision={"threshold": 0.5})
    guards = chain(spec, GuardContext(max_rows=4))
    ex = exchange({"inputs": []}, v2_answer(*[0.7] * 5))
    with pytest.raises(TooManyRows, match="a batch of 5 rows"):
        await run(guards, ex)
    assert ex.verdicts == [] and "X-Guard-Decision" not in ex.annotations and not ex.sampled


async def test_learned_rule_wins_over_policy() -> None:
    table = ThresholdTable(
        "v7", MappingProxyType({("sg", "adult", "", "male"): ThresholdRule(0.3)})
    )
    ctx = GuardContext(thresholds=Snapshot(table))
    ex = await run(chain_for(ADAPT, ctx), exchange(v2_request("male"), v2_answer(0.35)))
    assert ex.annotations["X-Guard-Decision"] == "1"
    assert ex.annotations["X-Guard-Threshold-Version"] == "v7"
    # Without adapt, the policy's threshold serves, whatever was learned before.
    ex = await run(chain_for({}, ctx), exchange(v2_request("male"), v2_answer(0.35)))
    assert (ex.annotations["X-Guard-Decision"], ex.annotations["X-Guard-Threshold"]) == ("0", "0.5")


async def test_a_newly_published_table_applies_to_the_next_request() -> None:
    snapshot = Snapshot(ThresholdTable())
    chain = chain_for(ADAPT, GuardContext(thresholds=snapshot))
    first = await run(chain, exchange(v2_request("male"), v2_answer(0.35)))
    rule = ThresholdRule(0.3)
    snapshot.publish(ThresholdTable("v8", MappingProxyType({("sg", "adult", "", "male"): rule})))
    second = await run(chain, exchange(v2_request("male"), v2_answer(0.35)))
    assert (first.annotations["X-Guard-Decision"], first.annotations["X-Guard-Threshold"]) == (
        "0",
        "0.5",
    )
    assert second.annotations["X-Guard-Decision"] == "1"
    assert second.annotations["X-Guard-Threshold"] == "0.3"
    assert second.annotations["X-Guard-Threshold-Version"] == "v8"


def applicant(age: int) -> dict[str, Any]:
    """A one-row v2 request; the age makes each applicant's row different."""
    request = v2_request("male")
    request["inputs"][0]["data"] = [age]
    return request


async def test_randomized_rule_is_deterministic_by_row_whatever_the_request_id() -> None:
    rule = ThresholdRule(low=0.4, high=0.6, p_high=0.5)
    ctx = GuardContext(
        thresholds=Snapshot(ThresholdTable("r", {("sg", "adult", "", "male"): rule}))
    )
    chain = chain_for(ADAPT, ctx)
    seen: dict[int, set[str]] = {}
    for attempt in range(3):
        for age in range(40):
            ex = exchange(applicant(age), v2_answer(0.5), request_id=f"id-{attempt}-{age}")
            await run(chain, ex)
            seen.setdefault(age, set()).add(ex.annotations["X-Guard-Decision"])
            assert ex.annotations["X-Guard-Threshold"] == "0.4|0.6@0.5"  # the rule, not the draw
    assert all(len(decisions) == 1 for decisions in seen.values())
    assert {d for ds in seen.values() for d in ds} == {"0", "1"}  # both thresholds in use


async def test_a_request_a_draw_cannot_read_is_refused_before_the_model_is_asked() -> None:
    # Drawn for at random after the model answered, its client would re-roll until it won.
    mixed = ThresholdTable("r", {("sg", "adult", "", "*"): ThresholdRule(0.4, 0.6, 0.5)})
    decision = {"subject": {"header": "X-Applicant", "trusted": True}, **ADAPT}
    spec = policy({"score": {"output": "score"}}, decision=decision)  # no groups read
    for body in (b'{"inputs":[],"pad":NaN}', b'{"inputs":[],"inputs":[]}'):
        guards = chain(spec, GuardContext(thresholds=Snapshot(mixed)))
        ex = exchange(None)
        ex.body = body
        with pytest.raises((UnreadableRequest, AmbiguousRequest)):
            await guards.on_request(ex)
        named = exchange(None, headers={"X-Applicant": "a-17"})  # its subject: not the body
        named.body = body
        await guards.on_request(named)
        plain = exchange(None)  # no mixed rule: the request is never read
        plain.body = body
        await chain(spec).on_request(plain)
        still = exchange(None)  # a mixed rule learned before adapt was taken out: never used
        still.body = body
        static = policy({"score": {"output": "score"}}, decision={"threshold": 0.5})
        await chain(static, GuardContext(thresholds=Snapshot(mixed))).on_request(still)


async def test_non_2xx_answers_are_left_alone() -> None:
    chain = chain_for({"on_error": "fail_closed"})
    ex = await run(chain, exchange(v2_request("male"), raw_response=b"oops", status=503))
    assert ex.verdicts == [] and chain.errors == {}


async def test_a_2xx_answer_is_read_as_json_whatever_its_type_says() -> None:
    # The openai SDK, and others, parse a text/plain or untyped answer as JSON all the same.
    for kind in (b"text/plain", b"", b"application/octet-stream", b"application/vnd.api+json"):
        guards = chain_for({"on_error": "fail_closed"})
        typed = exchange(v2_request("male"), v2_answer(0.7))
        typed.response_type = kind
        await run(guards, typed)
        assert typed.annotations["X-Guard-Decision"] == "1"
        text = exchange(v2_request("male"), raw_response=b"plain")
        text.response_type = kind
        await run(guards, text)  # not JSON after all: the guard's on_error
        assert text.reply is not None and text.reply.status == 502


BROKEN = [
    (b"{not json", "malformed JSON"),
    (b'{"outputs": [{"name": "proba", "shape": [1], "data": [0.3]}]}', "no output 'score'"),
    (b'{"outputs": [{"name": "score", "shape": [1], "data": ["x"]}]}', "not a number"),
]


@pytest.mark.parametrize(("raw", "message"), BROKEN)
async def test_fail_open_passes_answer_untouched(raw: bytes, message: str) -> None:
    chain = chain_for({"annotate": "body"})
    ex = await run(chain, exchange(v2_request("male"), raw_response=raw))
    assert ex.reply is None and ex.final_response_body() == raw
    assert chain.errors == {"decision": 1} and message in ex.errors[0]
    assert ex.annotations["X-Guard-Decision"] == "unscored" and ex.unscored


@pytest.mark.parametrize(("raw", "message"), BROKEN)
async def test_fail_closed_replies_502(raw: bytes, message: str) -> None:
    ex = await run(
        chain_for({"on_error": "fail_closed"}), exchange(v2_request("m"), raw_response=raw)
    )
    assert ex.reply is not None and ex.reply.status == 502
    assert "guard decision could not check the answer" in ex.reply.error
    assert message in ex.reply.error


async def test_failed_rewrite_leaves_no_partial_change() -> None:
    answer = v2_answer(0.7)
    answer["outputs"].pop()  # no predict output to rewrite
    chain = chain_for({"annotate": "rewrite"})
    ex = await run(chain, exchange(v2_request("male"), answer))
    assert chain.errors == {"decision": 1} and not ex.response_changed
    assert ex.verdicts == [] and ex.annotations == {}


async def test_a_group_count_that_is_not_the_score_count_refuses_the_request() -> None:
    # Not a guard's failure, which fail_open would pass undecided: the client's request.
    chain = chain_for({})
    with pytest.raises(AmbiguousRequest, match="2 groups for 3 scores") as refused:
        await run(chain, exchange(v2_request("male", "female"), v2_answer(0.1, 0.2, 0.3)))
    assert refused.value.status == 400


async def test_the_policy_threshold_decides_for_groups_without_their_own() -> None:
    ex = exchange(v2_request("female", "male", "other"), v2_answer(0.45, 0.65, 0.75))
    await run(chain_for({"threshold": 0.7}), ex)
    assert ex.annotations["X-Guard-Decision"] == "1,0,1"
    assert ex.annotations["X-Guard-Threshold"] == "0.4,0.7,0.7"


async def test_rewrite_replaces_the_output_the_policy_names() -> None:
    answer = v2_answer(0.42, 0.42)
    answer["outputs"].append({"name": "approved", "shape": [2], "datatype": "BOOL", "data": [0, 0]})
    ex = exchange(v2_request("female", "male"), answer)
    await run(chain_for({"annotate": "rewrite", "label_output": "approved"}), ex)
    outputs = {o["name"]: o["data"] for o in loads(ex.final_response_body())["outputs"]}
    assert outputs["approved"] == [1, 0] and outputs["predict"] == [0, 0]
