"""SamplingGuard: keyed by content, stratified per group and window, always the odd ones."""

from __future__ import annotations

from collections import Counter
from typing import Any

from guardproxy.guards.chain import GuardContext
from guardproxy.guards.draws import SAMPLING, Draws
from guardproxy.guards.exchange import Exchange, Reply
from guardproxy.guards.sampling import SamplingGuard
from guardproxy.policy.models import SamplingSpec
from guardproxy.sampling.sinks import SampleQueue
from tests.guards.exchanges import chain, exchange, policy, v2_answer, v2_request


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


KEY = Draws(bytes(range(32)))


def guard(
    clock: FakeClock | None = None, draws: Draws = KEY, **spec: Any
) -> tuple[SamplingGuard, SampleQueue]:
    queue = SampleQueue(100_000)
    return SamplingGuard(SamplingSpec(**spec), queue, "v1", clock or FakeClock(), draws), queue


async def sampled(g: SamplingGuard, ex: Exchange) -> bool:
    await g.on_response(ex)
    return ex.sampled


async def test_rate_sampling_is_deterministic_by_content_and_near_rate() -> None:
    g, _ = guard(rate=0.1)
    first = [await sampled(g, exchange({"row": i}, {}, request_id=f"a{i}")) for i in range(4000)]
    again = [await sampled(g, exchange({"row": i}, {}, request_id=f"b{i}")) for i in range(4000)]
    assert first == again  # new request ids: the same bodies are sampled, no others
    assert 300 < sum(first) < 500


async def test_a_client_cannot_pick_an_id_that_escapes_review() -> None:
    g, _ = guard(rate=0.5)
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [7]}]}
    outcomes = {await sampled(g, exchange(body, {}, request_id=f"try-{i}")) for i in range(200)}
    assert len(outcomes) == 1


async def test_rate_decision_is_the_keyed_draw_of_the_body() -> None:
    g, _ = guard(rate=0.3)
    other_key, _ = guard(draws=Draws(bytes(32)), rate=0.3)
    same = 0
    for i in range(300):
        ex = exchange({"u": i}, {})
        expected = KEY.uniform(ex.body, SAMPLING) < 0.3
        assert await sampled(g, ex) == expected
        same += await sampled(other_key, exchange({"u": i}, {})) == expected
    assert same < 280  # another key, other choices: without the key nobody can predict them


async def test_odd_exchanges_always_sampled() -> None:
    g, queue = guard(rate=0.0)
    flagged = exchange({}, {})
    flagged.flags.append("label:gorilla")
    errored = exchange({}, {})
    errored.errors.append("decision: bad")
    failed = exchange({}, {}, status=503)
    blocked = exchange({}, {})
    blocked.reply = Reply(422, "withheld")
    plain = exchange({}, {})
    results = [await sampled(g, ex) for ex in (flagged, errored, failed, blocked, plain)]
    assert results == [True, True, True, True, False]
    assert queue.offered == 4


async def test_odd_exchanges_past_max_always_are_sampled_at_the_rate_until_the_window_ends() -> (
    None
):
    clock = FakeClock()
    g, queue = guard(clock, rate=0.0, max_always=3, window=10.0)
    failed = [await sampled(g, exchange({"i": i}, {}, status=500)) for i in range(5)]
    assert failed == [True, True, True, False, False] and queue.always_capped == 2
    clock.now = 10.0  # a new window: the cap starts again
    assert await sampled(g, exchange({"i": 5}, {}, status=500))
    every, every_queue = guard(clock, rate=1.0, max_always=0)
    assert await sampled(every, exchange({}, {}, status=500))  # capped, but the rate takes it
    assert every_queue.always_capped == 1


async def test_a_request_the_guards_cannot_read_is_sampled_at_the_rate_only() -> None:
    queue = SampleQueue(100)
    sections = {
        "groups": {"values": ["f", "m"], "attribute": {"input": "sex"}},
        "model": {"score": {"output": "score"}},
        "sampling": {"rate": 0.0, "min_per_group": 0},
    }
    guards = chain(policy(**sections), GuardContext(samples=queue), "v1")
    unreadable = exchange({"inputs": []}, v2_answer(0.7))  # no "sex" input: the client's
    await guards.on_request(unreadable)
    await guards.on_response(unreadable)
    assert unreadable.errors and unreadable.request_errors == 1 and not unreadable.sampled
    bad_answer = exchange(v2_request("f"), {"outputs": []})  # no score: the model's
    await guards.on_request(bad_answer)
    await guards.on_response(bad_answer)
    assert bad_answer.errors and bad_answer.request_errors == 0 and bad_answer.sampled
    assert queue.offered == 1


async def test_stratified_minimum_for_a_rare_group() -> None:
    clock = FakeClock()
    g, _ = guard(clock, rate=0.01, min_per_group=3, window=10.0)
    per_window: Counter[tuple[int, str]] = Counter()
    seen: Counter[tuple[int, str]] = Counter()
    for i in range(4000):  # 0.05 s apart: 200 per window, the rare group at 2 %
        clock.now = i * 0.05
        group = "rare" if i % 50 == 0 else "common"
        ex = exchange({"s": i}, {}, request_id=f"s{i}")
        ex.groups = [group]
        window = int(clock.now // 10.0)
        seen[window, group] += 1
        per_window[window, group] += await sampled(g, ex)
    for window in range(20):
        assert per_window[window, "rare"] >= 3 and seen[window, "rare"] == 4
        assert 3 <= per_window[window, "common"] <= 12


async def test_sample_carries_final_answer_and_context() -> None:
    queue = SampleQueue(10)
    ctx = GuardContext(samples=queue)
    sections = {
        "groups": {"values": ["female", "male"], "attribute": {"input": "sex"}},
        "model": {"score": {"output": "score"}},
        "decision": {"annotate": "body"},
        "sampling": {"rate": 1.0},
    }
    guards = chain(policy(**sections), ctx, "policy-abc")
    ex = exchange(v2_request("male"), v2_answer(0.8), request_id="x-1")
    await guards.on_request(ex)
    await guards.on_response(ex)
    sample = queue.queue.get_nowait()
    assert (sample.request_id, sample.region, sample.policy) == ("x-1", "sg", "policy-abc")
    assert sample.groups == ["male"] and sample.decisions == [1] and sample.thresholds == [0.5]
    assert sample.request == ex.body
    assert sample.size == len(ex.body) + len(ex.response_body) > 0  # the wire's, not the doc's
    assert isinstance(sample.response, dict)
    assert sample.response["outputs"][-2]["name"] == "guardproxy"  # the changed answer


async def test_blocked_answer_is_still_sampled_by_the_chain() -> None:
    queue = SampleQueue(10)
    sections = {
        "model": {"protocol": "openai"},
        "labels": {"deny": ["gorilla"], "action": "block"},
        "sampling": {"rate": 0.0},
    }
    guards = chain(policy(**sections), GuardContext(samples=queue), "v1")
    answer = {"choices": [{"message": {"role": "assistant", "content": "a gorilla"}}]}
    ex = exchange({"messages": []}, answer)
    await guards.on_response(ex)
    assert ex.reply is not None and ex.sampled
    sample = queue.queue.get_nowait()
    assert sample.status == 422 and sample.flags == ["blocked:gorilla"]


async def test_samples_are_redacted_as_the_policy_says() -> None:
    queue = SampleQueue(10)
    sampling = {"rate": 1.0, "redact": ["account"], "detectors": ["email"]}
    spec = policy({"score": {"output": "score"}}, sampling=sampling)
    guards = chain(spec, GuardContext(samples=queue))
    request = {"account": "ACC-991", "note": "write to ann@example.com or call +65 6123 4567"}
    ex = exchange(request, v2_answer(0.8))
    await guards.on_request(ex)
    await guards.on_response(ex)
    record = queue.queue.get_nowait().record()
    assert record["request"] == {  # the field named, e-mail found, the phone detector not asked
        "account": "[REDACTED:account]",
        "note": "write to [REDACTED:email] or call +65 6123 4567",
    }
