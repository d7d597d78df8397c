"""POST /guardproxy/v1/feedback on a real proxy: forms, outcomes, bounds, errors, token."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from guardproxy import feedback
from guardproxy.feedback import (
    MAX_BODY,
    MAX_ID_LENGTH,
    STEP,
    BadBody,
    ndjson_lines,
    observed_time,
    prediction_id,
    validate,
)
from guardproxy.guards.exchange import Verdict
from guardproxy.testing import RecordingModel, RunningProxy, proxy_settings, running_proxy, serving
from tests.factories import observation
from tests.guards.exchanges import v2_request
from tests.state.conftest import drop_prefix

AUTH = {"Authorization": "Bearer feedback-secret"}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
async def fed(upstream_url: str) -> AsyncIterator[RunningProxy]:
    """A proxy that has recorded predictions p0..p9 (p0 has a second row, p0:1)."""
    async with running_proxy(proxy_settings(upstream_url)) as running:
        runtime = running.runtime
        model = runtime.store.snapshot.current.default.model("adult")
        assert model is not None
        for i in range(10):
            verdicts = [Verdict("Female", 0.7, 0.5, 1)]
            if i == 0:
                verdicts.append(Verdict("Male", 0.2, 0.5, 0))
            runtime.worker.offer(observation(model, f"p{i}", tuple(verdicts)))
        await runtime.worker.flush()
        yield running


async def post(
    proxy: RunningProxy, body: bytes | str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        url = f"{proxy.url}/guardproxy/v1/feedback"
        async with session.post(url, data=body, headers=AUTH if headers is None else headers) as r:
            return r.status, await r.json()


async def test_one_object(fed: RunningProxy) -> None:
    status, doc = await post(fed, json.dumps({"request_id": "p1", "label": 1}))
    assert status == 200
    assert doc["results"] == [{"request_id": "p1", "status": "joined"}]
    assert doc["totals"] == {
        "joined": 1,
        "unknown_id": 0,
        "duplicate": 0,
        "contested": 0,
        "invalid": 0,
    }


async def test_array_with_every_outcome_in_order(fed: RunningProxy) -> None:
    items = [
        {"request_id": "p2", "label": True},
        {"request_id": "nope", "label": 0},
        {"request_id": "p2", "label": 0},
        {"request_id": "p3", "label": 2},
        {"request_id": "p0:1", "label": False, "observed_at": "2024-05-01T10:00:00Z"},
        "junk",
    ]
    status, doc = await post(fed, json.dumps(items))
    assert status == 200
    statuses = [r["status"] for r in doc["results"]]
    assert statuses == ["joined", "unknown_id", "duplicate", "invalid", "joined", "invalid"]
    assert "label must be 0, 1, true or false" in doc["results"][3]["reason"]
    assert fed.runtime.engine.labels_joined == 2


async def test_ndjson_lines_with_a_malformed_line(fed: RunningProxy) -> None:
    body = '{"request_id": "p4", "label": 1}\n{oops\n{"request_id": "p5", "label": 0}\n'
    status, doc = await post(fed, body)
    assert status == 200
    assert [r["status"] for r in doc["results"]] == ["joined", "invalid", "joined"]
    assert "malformed JSON" in doc["results"][1]["reason"]


async def test_labels_reach_the_fairness_report(fed: RunningProxy) -> None:
    await post(fed, json.dumps([{"request_id": f"p{i}", "label": i % 2} for i in range(10)]))
    await fed.runtime.engine.refresh()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{fed.admin_url}/status") as r:
            status = await r.json()
    female = status["fairness"]["models"]["default|adult|"]["fairness"]["groups"]["Female"]
    assert (female["decisions"], female["labeled"]) == (10, 10)
    assert female["positive_predictive_value"]["value"] == 0.5
    assert status["monitor"]["processed"] == 10


async def test_a_large_batch_is_joined_in_steps_in_order(
    fed: RunningProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = fed.runtime.engine
    steps: list[int] = []
    join = engine.join

    async def counted(items: Any) -> Any:
        steps.append(len(items))
        return await join(items)

    monkeypatch.setattr(engine, "join", counted)
    items: list[Any] = [{"request_id": f"p{i}", "label": 1} for i in range(10)]
    items += ["junk"] * STEP + [{"request_id": "nope", "label": 0}] * STEP + [items[0]]
    status, doc = await post(fed, json.dumps(items))
    assert status == 200
    assert doc["totals"] == {
        "joined": 10,
        "unknown_id": STEP,
        "duplicate": 1,
        "contested": 0,
        "invalid": STEP,
    }
    statuses = [r["status"] for r in doc["results"]]
    assert statuses == ["joined"] * 10 + ["invalid"] * STEP + ["unknown_id"] * STEP + ["duplicate"]
    # At most STEP labels a step; a step of junk joins none; unknown ids are joined once more
    # after the records of the answers sent so far are written.
    assert steps == [10, STEP - 10, STEP - 10, 11]
    assert fed.runtime.feedback.counts["waited"] == 1


async def test_ndjson_lines_are_read_a_step_at_a_time(
    fed: RunningProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, read, steps = fed.runtime.engine, [0], []
    join, item_of = engine.join, feedback.ndjson_item

    def counted(line: bytes) -> Any:
        read[0] += 1
        return item_of(line)

    async def joined_after(items: Any) -> Any:
        steps.append(read[0])  # the lines read by the time each step joins
        return await join(items)

    monkeypatch.setattr(feedback, "ndjson_item", counted)
    monkeypatch.setattr(engine, "join", joined_after)
    lines = [json.dumps({"request_id": f"p{i % 10}", "label": 1}) for i in range(3 * STEP)]
    status, doc = await post(fed, "\n".join(lines))
    assert status == 200 and doc["totals"]["joined"] == 10
    assert steps == [STEP, 2 * STEP, 3 * STEP]  # not every line before the first step


async def test_concurrent_requests_take_a_step_at_a_time_a_pass_of_the_loop(
    fed: RunningProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, passes, seen = fed.runtime.engine, [0], []
    join = engine.join

    async def noted(items: Any) -> Any:
        seen.append(passes[0])  # the loop pass each step joined in
        return await join(items)

    async def count_passes() -> None:
        while True:
            passes[0] += 1
            await asyncio.sleep(0)

    monkeypatch.setattr(engine, "join", noted)
    counter = asyncio.create_task(count_passes())
    try:
        body = json.dumps([{"request_id": f"p{i % 10}", "label": 1} for i in range(3 * STEP)])
        answers = await asyncio.gather(*(post(fed, body) for _ in range(4)))
    finally:
        counter.cancel()
    assert [status for status, _ in answers] == [200] * 4
    assert len(seen) == 12 and len(set(seen)) == 12  # never two steps in one pass


async def test_ndjson_of_no_json_line_is_400_and_counts_no_item(fed: RunningProxy) -> None:
    counts = fed.runtime.feedback.counts
    status, doc = await post(fed, "\n".join(["not json"] * (STEP + 1)))
    assert status == 400 and doc["error"].startswith("malformed JSON")
    assert (counts["invalid"], counts["rejected"]) == (0, 1)


@pytest.mark.parametrize(
    "body",
    [
        '{"request_id": "p6", "label": 0, "label": 1}',
        '[{"request_id": "p7", "label": 1}, {"request_id": "p6", "request_id": "p7", "label": 1}]',
    ],
)
async def test_a_label_that_names_a_key_twice_joins_nothing(fed: RunningProxy, body: str) -> None:
    status, doc = await post(fed, body)
    assert status == 400 and "names a key more than once" in doc["error"]
    assert fed.runtime.engine.labels_joined == 0


async def test_an_ndjson_line_that_names_a_key_twice_is_invalid(fed: RunningProxy) -> None:
    body = '{"request_id": "p6", "label": 0, "label": 1}\n{"request_id": "p7", "label": 0}'
    status, doc = await post(fed, body)
    assert status == 200
    assert [r["status"] for r in doc["results"]] == ["invalid", "joined"]
    assert "names a key more than once" in doc["results"][0]["reason"]


async def test_batch_bound(fed: RunningProxy) -> None:
    items = [{"request_id": f"x{i}", "label": 1} for i in range(10_001)]
    status, doc = await post(fed, json.dumps(items))
    assert status == 413 and "limit is 10000" in doc["error"]
    ndjson = "\n".join(json.dumps(item) for item in items)
    assert (await post(fed, ndjson))[0] == 413


@pytest.mark.parametrize(
    "body", ["", "not json", "42", '"text"', '{"request_id": ', "not json\n{nor this"]
)
async def test_malformed_body_is_400(fed: RunningProxy, body: str) -> None:
    status, doc = await post(fed, body)
    assert status == 400
    assert "expected a JSON object" in doc["error"]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "feedback-secret"}]
)
async def test_token_required(fed: RunningProxy, headers: dict[str, str]) -> None:
    status, doc = await post(fed, json.dumps({"request_id": "p1", "label": 1}), headers)
    assert status == 401 and "token" in doc["error"]
    assert fed.runtime.engine.labels_joined == 0


async def test_other_reserved_paths_stay_404(fed: RunningProxy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{fed.url}/guardproxy/v1/other") as r:
            assert r.status == 404
        async with session.get(f"{fed.url}/guardproxy/v1/feedback") as r:
            assert r.status in (404, 405)


def test_validate_and_observed_time() -> None:
    assert (
        validate({"request_id": "a", "label": 1.0}, 0.0)
        == "label must be 0, 1, true or false, not 1.0"
    )
    assert isinstance(validate({"request_id": "", "label": 1}, 0.0), str)
    assert observed_time("2024-01-01T00:00:00+00:00", 0.0) == 1704067200.0
    assert observed_time(None, 5.0) == 5.0 and observed_time(-1, 0.0) is None
    assert observed_time("yesterday", 0.0) is None and observed_time(True, 0.0) is None


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("r1", True),
        ("a.b:c-d_e", True),
        ("x" * MAX_ID_LENGTH, True),
        ("x" * MAX_ID_LENGTH + ":12", True),  # row 12 of a batch under the longest id
        ("x" * (MAX_ID_LENGTH + 1), False),
        ("x" * (MAX_ID_LENGTH + 1) + ":1", False),
        ("a b", False),
        ("a/b", False),
        ("é", False),
        ("r1:\u0663", False),  # a digit, but not an ASCII one
        ("x" * MAX_ID_LENGTH + ":12345678901", False),
    ],
)
def test_feedback_ids_follow_the_proxied_request_ids(value: str, valid: bool) -> None:
    assert prediction_id(value) is valid
    outcome = validate({"request_id": value, "label": 1}, 0.0)
    assert isinstance(outcome, str) is not valid
    if not valid:
        assert f"1 to {MAX_ID_LENGTH} characters" in str(outcome)


async def test_an_invalid_id_is_answered_invalid_and_the_rest_still_join(
    fed: RunningProxy,
) -> None:
    body = json.dumps([{"request_id": "p1 ", "label": 1}, {"request_id": "p0:1", "label": 0}])
    status, doc = await post(fed, body)
    assert status == 200
    assert [r["status"] for r in doc["results"]] == ["invalid", "joined"]


def test_an_answer_repeats_no_more_than_the_start_of_a_rejected_value() -> None:
    nested = validate({"request_id": "a", "label": [[1]] * 100_000}, 0.0)
    assert nested == "label must be 0, 1, true or false, not a JSON array"
    long = validate({"request_id": "a", "label": 1, "observed_at": "x" * 1_000_000}, 0.0)
    assert isinstance(long, str) and len(long) < 120 and long.endswith("...")


def test_millions_of_ndjson_lines_are_refused_before_they_are_split() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(BadBody, match="limit is 10000") as refused:
            ndjson_lines(b"ab\n" * 600_000)  # 1.8 MB: under the body limit
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.status == 413
    assert peak < 10_000_000  # 600,000 lines as objects: over 25 MB


async def test_a_body_over_the_feedback_limit_is_413_whatever_max_body_says(
    fed: RunningProxy,
) -> None:
    assert fed.runtime.settings.max_body > MAX_BODY
    body = json.dumps([{"request_id": "p1", "label": 1, "pad": "x" * MAX_BODY}])
    status, doc = await post(fed, body)
    assert status == 413 and "error" in doc
    assert fed.runtime.engine.labels_joined == 0


async def test_an_invalid_item_is_answered_without_what_it_held(fed: RunningProxy) -> None:
    body = json.dumps([{"request_id": "r" * 100_000, "label": 1}, {"request_id": ["x"] * 9}])
    status, doc = await post(fed, body)
    assert status == 200
    assert [r["request_id"] for r in doc["results"]] == [None, None]
    assert len(json.dumps(doc)) < 1000


async def test_a_failing_state_backend_is_a_503_that_names_no_address(
    upstream_url: str,
) -> None:
    settings = proxy_settings(upstream_url, state=f"redis://:pw@127.0.0.1:{closed_port()}/9")
    async with running_proxy(settings) as proxy:
        status, doc = await post(proxy, json.dumps({"request_id": "p1", "label": 1}))
        assert status == 503
        assert doc == {"error": "labels could not be stored: the state backend failed"}
        assert proxy.runtime.feedback.counts["state_errors"] == 1


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_label_sent_as_soon_as_its_answer_joins(backend: str) -> None:
    """A record is written 10-20 ms after its answer: a label sent at once waits for it."""
    prefix = f"gp-test-{os.urandom(4).hex()}:"
    state = "memory" if backend == "memory" else f"redis://127.0.0.1:6379/0?prefix={prefix}"
    model = RecordingModel(score=0.7)
    try:
        async with serving(model.app()) as upstream, aiohttp.ClientSession() as session:
            async with running_proxy(proxy_settings(upstream, state=state)) as proxy:
                for i in range(20):
                    headers = {"X-Request-Id": f"now-{i}"}
                    url = f"{proxy.url}/v2/models/adult/infer"
                    async with session.post(url, json=v2_request("Female"), headers=headers) as r:
                        assert r.status == 200 and r.headers["X-Guard-Decision"] == "1"
                    status, doc = await post(
                        proxy, json.dumps({"request_id": f"now-{i}", "label": 1})
                    )
                    assert status == 200 and doc["totals"]["joined"] == 1, doc
                assert proxy.runtime.engine.labels_joined == 20
                assert proxy.runtime.feedback.counts["wait_timeouts"] == 0
    finally:
        if backend == "redis":
            await drop_prefix(prefix)


async def test_a_label_sent_to_another_replica_as_soon_as_its_answer_joins() -> None:
    """Another worker or replica on the same Redis writes the record: the label waits for it."""
    prefix = f"gp-test-{os.urandom(4).hex()}:"
    state = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    model = RecordingModel(score=0.7)
    try:
        async with (
            serving(model.app()) as upstream,
            aiohttp.ClientSession() as session,
            running_proxy(proxy_settings(upstream, state=state)) as answering,
            running_proxy(proxy_settings(upstream, state=state)) as labelled,
        ):
            for i in range(20):
                url = f"{answering.url}/v2/models/adult/infer"
                headers = {"X-Request-Id": f"there-{i}"}
                async with session.post(url, json=v2_request("Female"), headers=headers) as r:
                    assert r.status == 200
                body = json.dumps({"request_id": f"there-{i}", "label": 1})
                status, doc = await post(labelled, body)
                assert status == 200 and doc["totals"]["joined"] == 1, (i, doc)
            marks = labelled.runtime.status()["feedback"]["marks"]  # type: ignore[index]
            assert marks["other_writers"] == 1 and marks["waits"] == 20 and marks["errors"] == 0
    finally:
        await drop_prefix(prefix)


async def test_a_label_waits_for_its_record_at_most_the_settle_timeout(
    fed: RunningProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records that cannot be written in time: the unknown id is answered, and counted."""
    monkeypatch.setattr("guardproxy.feedback.SETTLE_TIMEOUT", 0.05)
    runtime = fed.runtime
    await runtime.worker.stop(drain=False)  # what is offered now is never processed
    model = runtime.store.snapshot.current.default.model("adult")
    assert model is not None
    runtime.worker.offer(observation(model, "late", (Verdict("Female", 0.7, 0.5, 1),)))
    status, doc = await post(fed, json.dumps([{"request_id": "late", "label": 1}]))
    assert status == 200 and doc["totals"]["unknown_id"] == 1
    assert runtime.feedback.counts["waited"] == 1
    assert runtime.feedback.counts["wait_timeouts"] == 1
