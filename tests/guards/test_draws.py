"""Keyed draws and randomized decisions: same row, same answer; the mix's rate holds overall."""

from __future__ import annotations

import hashlib
import math
from types import MappingProxyType
from typing import Any

import pytest

from guardproxy.guards.chain import GuardContext, build_chain
from guardproxy.guards.draws import SAMPLING, THRESHOLD, Draws, derive_key
from guardproxy.guards.exchange import Exchange
from guardproxy.policy.thresholds import Snapshot, ThresholdRule, ThresholdTable
from tests.guards.exchanges import exchange, policy, v2_answer

KEY = Draws(derive_key("a test key that is long enough"))
MIX = ThresholdRule(low=0.27, high=0.32, p_high=0.42)
HEADER_GROUPS = {"values": ["female", "male"], "attribute": {"header": "X-G", "trusted": True}}


def v2(*ages: int) -> dict[str, Any]:
    n = len(ages)
    return {"inputs": [{"name": "age", "shape": [n], "datatype": "INT64", "data": list(ages)}]}


def chain(rule: ThresholdRule | None = MIX, draws: Draws = KEY, **decision: Any) -> Any:
    rules = {} if rule is None else {("sg", "adult", "", "female"): rule}
    ctx = GuardContext(
        thresholds=Snapshot(ThresholdTable("t1", MappingProxyType(rules))), draws=draws
    )
    decision = {"adapt": {}, **decision}  # learned rules serve only a policy that adapts
    spec = policy({"score": {"output": "score"}}, groups=HEADER_GROUPS, decision=decision)
    return build_chain("sg", spec, "v1", ctx)


async def decide(
    guards: Any,
    request: Any,
    rows: int = 1,
    score: float = 0.3,
    headers: dict[str, str] | None = None,
    request_id: str = "req-1",
) -> Exchange:
    """One exchange through the chain: a female applicant, the model answering `score`."""
    answer = v2_answer(*[score] * rows)
    ex = exchange(
        request, answer, headers={"X-G": "female", **(headers or {})}, request_id=request_id
    )
    await guards.on_request(ex)
    await guards.on_response(ex)
    return ex


def test_draws_are_keyed_and_separated_by_purpose() -> None:
    assert KEY.uniform(b"row", THRESHOLD) == KEY.uniform(b"row", THRESHOLD)
    assert KEY.uniform(b"row", THRESHOLD) != KEY.uniform(b"row", SAMPLING)
    assert KEY.uniform(b"row", THRESHOLD) != Draws(derive_key("another key, also long")).uniform(
        b"row", THRESHOLD
    )
    with pytest.raises(ValueError):
        KEY.use(b"short", "test")


def test_a_draw_is_the_keyed_blake2b_of_the_subject_before_and_after_a_key_switch() -> None:
    draws, key = Draws(derive_key("one key")), derive_key("the fleet's key")

    def expected(subject: bytes, purpose: bytes, secret: bytes) -> float:
        digest = hashlib.blake2b(subject, digest_size=8, key=secret, person=purpose).digest()
        return int.from_bytes(digest, "big") / 2.0**64

    assert draws.uniform(b"row", SAMPLING) == expected(b"row", SAMPLING, derive_key("one key"))
    draws.use(key, "state")
    for subject in (b"", b"row", b"x" * 1000):
        assert draws.uniform(subject, THRESHOLD) == expected(subject, THRESHOLD, key)


async def test_the_mix_rate_holds_over_distinct_rows_within_a_binomial_bound() -> None:
    guards, n = chain(), 4000
    high = 0
    for age in range(n):
        ex = await decide(guards, v2(age), request_id=f"r{age}")
        high += ex.verdicts[0].threshold == MIX.high
        assert ex.annotations["X-Guard-Threshold"] == "0.27|0.32@0.42"
    bound = 4.5 * math.sqrt(n * MIX.p_high * (1 - MIX.p_high))
    assert abs(high - n * MIX.p_high) < bound


async def test_same_row_same_answer_across_ids_retries_and_batches() -> None:
    guards = chain()
    single = [(await decide(guards, v2(41), request_id=f"try-{i}")).verdicts[0] for i in range(50)]
    assert len({v.threshold for v in single}) == 1
    batch = await decide(guards, v2(7, 41, 7), rows=3)
    assert batch.verdicts[1].threshold == single[0].threshold
    assert batch.verdicts[0].threshold == batch.verdicts[2].threshold  # identical rows


async def test_a_trusted_subject_header_decides_for_the_applicant() -> None:
    guards = chain(subject={"header": "X-Subject-Id", "trusted": True})
    by_subject = {
        (await decide(guards, v2(age), headers={"X-Subject-Id": "applicant-9"}))
        .verdicts[0]
        .threshold
        for age in range(30)
    }
    assert len(by_subject) == 1  # one applicant, one draw, whatever it sends
    without = {(await decide(guards, v2(age))).verdicts[0].threshold for age in range(60)}
    assert without == {MIX.low, MIX.high}  # no header: each row draws from its content


async def test_a_subject_path_selects_the_row_subject() -> None:
    guards = chain(subject={"jsonpath": "$.parameters.applicant"})
    seen = set()
    for age in range(30):
        request = {**v2(age), "parameters": {"applicant": "a-1"}}
        seen.add((await decide(guards, request)).verdicts[0].threshold)
    assert len(seen) == 1


async def test_only_a_randomized_rule_reads_the_request() -> None:
    unreadable = {"inputs": "not a tensor"}
    static = await decide(chain(rule=None, threshold=0.5), unreadable, score=0.7)
    assert static.annotations["X-Guard-Decision"] == "1" and not static.errors
    assert static.annotations["X-Guard-Threshold"] == "0.5"
    mixed = await decide(chain(), unreadable)
    assert mixed.errors and "X-Guard-Decision" not in mixed.annotations


def test_subject_needs_one_source_and_a_trusted_header() -> None:
    for subject in ({"header": "X-S"}, {}, {"header": "X-S", "jsonpath": "$.a", "trusted": True}):
        with pytest.raises(ValueError):
            policy(decision={"subject": subject})
