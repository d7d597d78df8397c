"""guardproxy's gRPC port applies the region's policy: decisions, blocks, breaker, records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from guardproxy.grpc.generated import grpc_predict_v2_pb2 as pb
from guardproxy.guards.thresholds import HEADER_ROWS
from guardproxy.hotpath.upstream import Timeouts
from guardproxy.payloads.tensors import pack, unpack
from guardproxy.policy.thresholds import ThresholdRule, ThresholdTable
from guardproxy.testing import eventually

from .guarded import ADMIN, FEEDBACK, guarded, infer, parameters, policy, rows, stream


def output(answer: object, name: str) -> list[object]:
    """The values of an answer's raw output tensor."""
    names = [t.name for t in answer.outputs]  # type: ignore[attr-defined]
    t = answer.outputs[names.index(name)]  # type: ignore[attr-defined]
    raw = answer.raw_output_contents[names.index(name)]  # type: ignore[attr-defined]
    return unpack(t.datatype, list(t.shape), raw, name)


async def test_each_row_is_decided_by_its_group_and_reported_in_metadata(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g:
        answer, initial, _ = await infer(g.target, rows(), [("x-request-id", "grpc-1")])
        assert output(answer, "score") == [0.25, 0.25]  # the model's answer, untouched
        assert initial["x-guard-decision"] == "1,0"  # Female 0.2, Male 0.5
        assert initial["x-guard-threshold"] == "0.2,0.5"
        assert initial["x-guard-region"] == "default"
        assert initial["x-guard-model"] == "echo"
        assert initial["x-guard-policy"] == g.proxy.runtime.store.table.default.version
        assert initial["x-request-id"] == "grpc-1"
        assert "x-guard-breaker" not in initial  # only when the breaker is not closed
        status = g.proxy.runtime.status()["grpc"]
        assert status["guards"]["guarded"] == 1
        assert status["calls"]["statuses"] == {"OK": 1}


async def test_a_request_id_is_generated_when_absent_and_replaced_when_malformed(
    tmp_path: Path,
) -> None:
    async with guarded(tmp_path) as g:
        _, generated, _ = await infer(g.target, rows())
        assert len(generated["x-request-id"]) == 32
        _, from_id, _ = await infer(g.target, rows(request_id="oip-7"))
        assert from_id["x-request-id"] == "oip-7"  # the request's own OIP id
        for bad in ("../x; rm", "a" * 129):
            _, replaced, _ = await infer(g.target, rows(), [("x-request-id", bad)])
            assert len(replaced["x-request-id"]) == 32
        assert g.proxy.runtime.status()["grpc"]["guards"]["request_ids_replaced"] == 2


async def test_the_region_key_chooses_the_region_policy(tmp_path: Path) -> None:
    async with guarded(tmp_path, trust_region_header="X-Region") as g:
        _, sg, _ = await infer(g.target, rows(sex=["Male"]), [("x-region", "sg")])
        assert (sg["x-guard-region"], sg["x-guard-decision"]) == ("sg", "1")  # threshold 0.1
        _, unknown, _ = await infer(g.target, rows(sex=["Male"]), [("x-region", "mars")])
        assert (unknown["x-guard-region"], unknown["x-guard-decision"]) == ("default", "0")
        assert g.proxy.runtime.status()["grpc"]["guards"]["unknown_region"] == 1


async def test_a_region_key_given_twice_is_refused(tmp_path: Path) -> None:
    async with guarded(tmp_path, trust_region_header="X-Region") as g:
        for metadata in ([("x-region", "th"), ("x-region", "sg")], [("x-region", "th,sg")]):
            with pytest.raises(aio.AioRpcError) as raised:
                await infer(g.target, rows(sex=["Male"]), metadata)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert raised.value.details() == "the region header is given more than once"
        assert g.proxy.runtime.status()["grpc"]["guards"]["refused"] == {"ambiguous_region": 2}
        assert len(g.model.metadata) == 0  # the model was never asked


async def test_the_region_key_is_only_the_one_the_operator_named(tmp_path: Path) -> None:
    async with guarded(tmp_path, trust_region_header="X-Trusted-Region") as g:
        _, ignored, _ = await infer(g.target, rows(sex=["Male"]), [("x-region", "sg")])
        assert ignored["x-guard-region"] == "default"
        _, named, _ = await infer(g.target, rows(sex=["Male"]), [("x-trusted-region", "sg")])
        assert named["x-guard-region"] == "sg"


async def test_no_region_key_is_honoured_unless_the_operator_trusts_one(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g:
        _, ignored, _ = await infer(g.target, rows(sex=["Male"]), [("x-region", "sg")])
        assert ignored["x-guard-region"] == "default"


async def test_an_undeclared_model_passes_unguarded_and_is_counted(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g:
        answer, initial, _ = await infer(g.target, rows("other"), [("x-request-id", "u-1")])
        assert answer.model_name == "other"
        assert initial["x-request-id"] == "u-1"
        assert "x-guard-decision" not in initial
        _, tf, _ = await infer(g.target, rows("scored-json"))
        assert "x-guard-decision" not in tf  # declared, but not an OIP model
        guards = g.proxy.runtime.status()["grpc"]["guards"]
        assert guards["unguarded"] == {"undeclared_model": 1, "not_oip": 1}
        assert guards["guarded"] == 0


REFUSE = """
unguarded:
  action: refuse
  allow: [/inference.GRPCInferenceService/ServerLive, /v2/models/open/infer, /grpc.health.v1/**]
"""


async def live(target: str, method: str = "ServerLive", metadata: tuple[Any, ...] = ()) -> object:
    """One call of a method other than inference (an OIP one by its name), with a ServerLive
    message."""
    async with aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            method if method.startswith("/") else f"/inference.GRPCInferenceService/{method}",
            pb.ServerLiveRequest.SerializeToString, pb.ServerLiveResponse.FromString,
        )  # fmt: skip
        return await call(pb.ServerLiveRequest(), metadata=metadata)


async def test_a_region_that_refuses_unguarded_paths_refuses_such_calls_too(
    tmp_path: Path,
) -> None:
    async with guarded(tmp_path, policy(extra=REFUSE)) as g:
        for model in ("other", "scored-json"):  # undeclared; declared, but not an OIP model
            with pytest.raises(aio.AioRpcError) as raised:
                await infer(g.target, rows(model), [("x-request-id", f"r-{model}")])
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
            assert raised.value.details() == "no guarded model serves this model"
            assert dict(raised.value.trailing_metadata())["x-request-id"] == f"r-{model}"
        assert len(g.model.metadata) == 0  # the model was never asked
        with pytest.raises(aio.AioRpcError) as raised:  # a refusal ends the stream
            await stream(g.target, [rows("other")])
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        open_answer, initial, _ = await infer(g.target, rows("open"))  # allowed by its HTTP path
        assert open_answer.model_name == "open" and "x-guard-decision" not in initial
        assert await live(g.target) == pb.ServerLiveResponse(live=True)  # its method is allowed
        with pytest.raises(aio.AioRpcError) as raised:
            await live(g.target, "RepositoryIndex")
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND  # not UNIMPLEMENTED: not sent
        assert raised.value.details() == "no guarded model serves this method"
        with pytest.raises(aio.AioRpcError) as raised:  # allowed, unless it leaves its service
            await live(g.target, "/grpc.health.v1/../inference.GRPCInferenceService/ServerLive")
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        guards = g.proxy.runtime.status()["grpc"]["guards"]
        assert guards["refused"] == {"unguarded": 5}
        assert guards["unguarded"] == {"undeclared_model": 1}


async def test_a_region_that_passes_unguarded_paths_forwards_every_method(tmp_path: Path) -> None:
    async with guarded(tmp_path, trust_region_header="X-Region") as g:
        with pytest.raises(aio.AioRpcError) as raised:
            await live(g.target, "RepositoryIndex")
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED  # the model server's answer
        with pytest.raises(aio.AioRpcError) as raised:  # but no region may be named twice
            await live(g.target, metadata=(("x-region", "sg"), ("x-region", "th")))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert g.proxy.runtime.status()["grpc"]["guards"]["refused"] == {"ambiguous_region": 1}


async def test_a_request_whose_tensors_cannot_be_read_still_gets_a_guarded_answer(
    tmp_path: Path,
) -> None:
    # A lenient model answers it (the extra raw entry is ignored): the answer is still decided.
    malformed = rows()
    malformed.raw_input_contents.append(b"extra")
    async with guarded(tmp_path) as g:
        answer, initial, _ = await infer(g.target, malformed, [("x-request-id", "m-1")])
        assert output(answer, "score") == [0.25, 0.25]
        assert initial["x-guard-decision"] == "0,0"  # no group read: the policy's 0.5 for all
        guards = g.proxy.runtime.status()["grpc"]["guards"]
        assert guards["guarded"] == guards["undecodable"] == 1
        await g.proxy.runtime.worker.flush()
        assert g.proxy.runtime.health.recent(("default", "echo"))["total"]["decided"] == 1


async def test_a_label_block_is_failed_precondition_with_the_decision_metadata(
    tmp_path: Path,
) -> None:
    async with guarded(tmp_path) as g:
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(g.target, rows("tagger", tags=["cat", "gorilla"]), [("x-request-id", "b")])
        err = raised.value
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details() == "the answer was withheld by policy"
        trailers = dict(err.trailing_metadata())
        assert (trailers["x-request-id"], trailers["x-guard-model"]) == ("b", "tagger")
        assert g.proxy.runtime.status()["grpc"]["guards"]["blocked"] == 1
        answer, _, _ = await infer(g.target, rows("tagger", tags=["cat", "dog"]))
        assert output(answer, "tags") == ["cat", "dog"]


async def test_a_policy_status_403_is_permission_denied(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g:
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(g.target, rows("forbidden", tags=["gorilla", "cat"]))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert raised.value.details() == "not shown in this region"


async def test_a_suppressed_label_changes_the_answer_the_client_gets(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g:
        answer, initial, _ = await infer(g.target, rows("suppressor", tags=["cat", "gorilla"]))
        assert output(answer, "tags") == ["cat", ""]
        assert initial["x-guard-labels"] == "suppressed=1"
        assert output(answer, "score") == [0.25, 0.25]


async def test_body_annotation_adds_the_decision_outputs(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g:
        answer, initial, _ = await infer(g.target, rows("annotated"))
        assert output(answer, "guardproxy") == [1, 0]
        assert output(answer, "guardproxy_threshold") == pytest.approx([0.2, 0.5])
        assert initial["x-guard-decision"] == "1,0"


async def test_a_large_batch_gets_its_decisions_as_outputs_not_metadata(tmp_path: Path) -> None:
    n = HEADER_ROWS * 8  # per-row metadata (12 KB) would pass gRPC's 8 KiB limit
    async with guarded(tmp_path) as g:
        answer, initial, _ = await infer(g.target, rows("echo", ["Female", "Male"] * (n // 2)))
        assert output(answer, "guardproxy") == [1, 0] * (n // 2)
        assert initial["x-guard-decision"] == initial["x-guard-threshold"] == "body"


async def test_a_batch_over_max_rows_is_resource_exhausted(tmp_path: Path) -> None:
    async with guarded(tmp_path, max_rows=4) as g:
        calls = len(g.model.metadata)
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(g.target, rows("echo", ["Female"] * 5))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert raised.value.details() == "a batch of 5 rows is over the limit of 4"
        assert len(g.model.metadata) == calls  # the model was never asked
        guards = g.proxy.runtime.status()["grpc"]["guards"]
        assert guards["refused"] == {"too_many_rows": 1} and guards["blocked"] == 0
        answer, _, _ = await infer(g.target, rows("echo", ["Female"] * 4))
        assert output(answer, "score") == [0.25] * 4


async def test_a_group_input_given_twice_is_invalid_argument(tmp_path: Path) -> None:
    twice = rows("echo", ["Male"])
    twice.inputs.add(name="sex", datatype="BYTES", shape=[1])  # which one would the model read?
    twice.raw_input_contents.append(pack("BYTES", ["Female"], "sex"))
    async with guarded(tmp_path) as g:
        calls = len(g.model.metadata)
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(g.target, twice)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details() == "input 'sex' is given more than once"
        assert len(g.model.metadata) == calls  # the model was never asked
        assert g.proxy.runtime.status()["grpc"]["guards"]["refused"] == {"ambiguous": 1}


async def test_a_tensor_over_max_rows_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    over = rows("echo", ["Female"] * 5)
    over.raw_input_contents[0] = b"\xff" * 8  # no BYTES framing: never read
    async with guarded(tmp_path, max_rows=4) as g:
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(g.target, over)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert raised.value.details() == "a batch of 5 rows is over the limit of 4"
        guards = g.proxy.runtime.status()["grpc"]["guards"]
        assert guards["refused"] == {"too_many_rows": 1} and guards["undecodable"] == 0


async def test_an_unguarded_models_tensors_are_never_decoded(tmp_path: Path) -> None:
    other = rows("other", ["Female"] * 3)
    other.raw_input_contents[1] = b"\x00" * 3  # unreadable age, echoed back: nobody reads it
    async with guarded(tmp_path) as g:
        answer, initial, _ = await infer(g.target, other, [("x-request-id", "u-2")])
        assert answer.model_name == "other" and "x-guard-decision" not in initial
        assert initial["x-request-id"] == "u-2"
        grpc_status = g.proxy.runtime.status()["grpc"]
        assert grpc_status["guards"]["undecodable"] == 0
        assert grpc_status["calls"]["errors"] == {}  # neither the request nor the answer


@pytest.mark.parametrize("action", ["reject", "fallback"])
async def test_a_forced_open_breaker_is_unavailable_with_a_retry_delay(
    tmp_path: Path, action: str
) -> None:
    text = policy(action).replace(
        "open: {action: fallback}", "open: {action: fallback, upstream: 'http://127.0.0.1:9'}"
    )
    async with guarded(tmp_path, text) as g, aiohttp.ClientSession() as http:
        forced = await http.post(
            g.proxy.admin_url + "/admin/breaker/default", json={"state": "forced_open"},
            headers=ADMIN,
        )  # fmt: skip
        assert forced.status == 200
        calls_before = len(g.model.metadata)
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(g.target, rows(), [("x-request-id", "open-1")])
        err = raised.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        trailers = dict(err.trailing_metadata())
        assert trailers["x-guard-breaker"] == "forced_open"
        assert trailers["x-request-id"] == "open-1"
        assert int(trailers["retry-after"]) >= 1
        assert len(g.model.metadata) == calls_before  # the model never saw it
        guards = g.proxy.runtime.status()["grpc"]["guards"]
        assert guards["refused"] == {f"breaker_{action}": 1}


async def test_a_flagging_breaker_serves_and_marks(tmp_path: Path) -> None:
    async with guarded(tmp_path, policy("flag")) as g, aiohttp.ClientSession() as http:
        await http.post(
            g.proxy.admin_url + "/admin/breaker/default?model=echo",
            json={"state": "forced_open"}, headers=ADMIN,
        )  # fmt: skip
        _, initial, _ = await infer(g.target, rows())
        assert initial["x-guard-breaker"] == "forced_open"
        assert initial["x-guard-decision"] == "1,0"


async def test_upstream_failures_count_against_the_breaker_as_documented(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g:
        breaker = g.proxy.runtime.breakers.breaker("default", "echo")
        assert breaker is not None
        for code in ("UNAVAILABLE", "INTERNAL", "NOT_FOUND", "UNKNOWN"):
            with pytest.raises(aio.AioRpcError) as raised:
                await infer(g.target, rows(fail=code))
            assert raised.value.code() == grpc.StatusCode[code]
            assert dict(raised.value.trailing_metadata())["x-guard-model"] == "echo"
        # A client's deadline shorter than the breaker's slow_call (0.2 s) is not the model's.
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(g.target, rows(sleep=5.0), [("grpc-timeout", "50m")])
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        guards = g.proxy.runtime.grpc.hook.stats  # type: ignore[union-attr]
        await eventually(lambda: guards.failures["DEADLINE_EXCEEDED"] == 1)
        assert (breaker.upstream.calls, breaker.upstream.errors) == (4, 2)
        # A longer one that the model still misses is.
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(g.target, rows(sleep=5.0), [("grpc-timeout", "400m")])
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: guards.failures["DEADLINE_EXCEEDED"] == 2)
        assert (breaker.upstream.calls, breaker.upstream.errors) == (5, 3)
        failures = g.proxy.runtime.status()["grpc"]["guards"]["failures"]
        assert failures == {"UNAVAILABLE": 1, "INTERNAL": 1, "NOT_FOUND": 1, "UNKNOWN": 1,
                            "DEADLINE_EXCEEDED": 2}  # fmt: skip


async def test_a_model_slower_than_the_deadline_counts_against_it(tmp_path: Path) -> None:
    async with guarded(tmp_path, timeouts=Timeouts(total=0.4)) as g:
        breaker = g.proxy.runtime.breakers.breaker("default", "echo")
        assert breaker is not None
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(g.target, rows(sleep=5.0))
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: breaker.upstream.calls == 1)
        assert breaker.upstream.errors == 1


async def test_labels_fed_back_by_request_id_join_grpc_predictions(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g, aiohttp.ClientSession() as http:
        await infer(g.target, rows(), [("x-request-id", "join-1")])
        engine = g.proxy.runtime.engine
        await eventually(lambda: engine.recorded == 2)
        labels = [{"request_id": "join-1", "label": 1}, {"request_id": "join-1:1", "label": 0}]
        async with http.post(
            g.proxy.url + "/guardproxy/v1/feedback", json=labels, headers=FEEDBACK
        ) as response:
            body = await response.json()
        assert [item["status"] for item in body["results"]] == ["joined", "joined"]
        assert engine.labels_joined == 2


async def test_grpc_observations_reach_sampling_drift_and_telemetry(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g, aiohttp.ClientSession() as http:
        for i in range(6):
            await infer(g.target, rows(tags=["a", "b"]), [("x-request-id", f"s-{i}")])
        runtime = g.proxy.runtime
        await eventually(lambda: runtime.sample_writer.written >= 6)
        await eventually(lambda: runtime.watchdog.status()["models"])
        lines = [json.loads(line) for f in sorted(g.samples.glob("*.jsonl")) for line in f.open()]
        sample = next(s for s in lines if s["request_id"] == "s-0")
        assert sample["decisions"] == [1, 0]
        inputs = {t["name"]: t["data"] for t in sample["request"]["inputs"]}
        assert inputs == {"sex": ["Female", "Male"], "age": [30.0, 31.0], "tags": ["a", "b"]}
        assert sample["response"]["outputs"][-1]["data"] == [0.25, 0.25]
        async with http.get(g.proxy.admin_url + "/metrics") as response:
            text = await response.text()
        assert "guardproxy_decisions_total{" in text and 'model="echo"' in text


async def test_a_randomized_rule_draws_from_every_input_of_the_row(tmp_path: Path) -> None:
    rule = ThresholdRule(low=0.1, high=0.9, p_high=0.5)
    async with guarded(tmp_path) as g:
        runtime = g.proxy.runtime
        runtime.thresholds.publish(ThresholdTable("r", {("default", "echo", "1", "Female"): rule}))
        decisions = set()
        for i in range(16):  # `tags` is no input the policy reads: decoded for the draw only
            request = rows(sex=["Female"], tags=[f"t{i}"])
            _, initial, _ = await infer(g.target, request, [("x-request-id", f"d-{i}")])
            assert initial["x-guard-threshold"] == "0.1|0.9@0.5"
            decisions.add(initial["x-guard-decision"])
        assert decisions == {"0", "1"}  # the draw depends on the unread input
        await eventually(lambda: runtime.sample_writer.written >= 16)
    lines = [json.loads(line) for f in sorted(g.samples.glob("*.jsonl")) for line in f.open()]
    assert [s["errors"] for s in lines] == [[]] * 16


async def test_a_grpc_sample_is_redacted_like_any_other(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g:
        request = rows(tags=["mail alice@example.com", "ok"])  # an input the policy never reads
        await infer(g.target, request, [("x-request-id", "pii-1")])
        await eventually(lambda: g.proxy.runtime.sample_writer.written >= 1)
    lines = [json.loads(line) for f in sorted(g.samples.glob("*.jsonl")) for line in f.open()]
    sample = next(s for s in lines if s["request_id"] == "pii-1")
    tags = next(t["data"] for t in sample["request"]["inputs"] if t["name"] == "tags")
    assert tags == ["mail [REDACTED:email]", "ok"]
    assert "alice@example.com" not in json.dumps(sample)


async def test_each_stream_message_is_guarded(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g:
        answers = await stream(
            g.target, [rows(sex=["Female"], request_id="m-1"), rows(sex=["Male"]), rows("other")]
        )
        first, second, third = (a.infer_response for a in answers)
        assert parameters(first)["x-guard-decision"] == "1"
        assert parameters(first)["x-request-id"] == "m-1"
        assert parameters(second)["x-guard-decision"] == "0"
        assert len(parameters(second)["x-request-id"]) == 32
        assert set(parameters(third)) == {"x-request-id"}  # unguarded: the id only
        guards = g.proxy.runtime.status()["grpc"]["guards"]
        assert (guards["guarded"], guards["pending"]) == (2, 0)


async def test_the_models_rich_error_details_reach_the_client(tmp_path: Path) -> None:
    async with guarded(tmp_path) as g:
        with pytest.raises(aio.AioRpcError) as raised:
            await infer(g.target, rows(details="age"))
        err = raised.value
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "bad input")
        trailers = dict(err.trailing_metadata())
        status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
        violation = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(violation)
        assert violation.field_violations[0].field == "age"
        assert trailers["x-guard-model"] == "echo"  # the guard's trailers as well


@pytest.mark.parametrize(
    "sent", [[("x-request-id", "r" * 200)], [("x-request-id", "one"), ("x-request-id", "two")]]
)
async def test_the_model_gets_the_request_id_the_proxy_settled_on(
    tmp_path: Path, sent: list[tuple[str, str]]
) -> None:
    async with guarded(tmp_path) as g:
        for model in ("echo", "other"):  # guarded or not
            _, initial, _ = await infer(g.target, rows(model), sent)
            upstream = [v for k, v in g.model.metadata_lists[-1] if k == "x-request-id"]
            assert upstream == [initial["x-request-id"]]
            assert initial["x-request-id"] == (sent[0][1] if len(sent) == 2 else upstream[0])


@pytest.mark.parametrize(
    ("sent", "upstream"),
    [
        ([("x-request-id", "r" * 200)], []),
        ([("x-request-id", "x y;z")], []),
        ([("x-request-id", "one"), ("x-request-id", "two")], ["one"]),
    ],
)
async def test_a_stream_sends_the_model_only_a_well_formed_request_id(
    tmp_path: Path, sent: list[tuple[str, str]], upstream: list[str]
) -> None:
    # A stream has no one id (each message has its own): the first, as the log line has it.
    async with guarded(tmp_path) as g:
        assert len(await stream(g.target, [rows()], sent)) == 1
        assert [v for k, v in g.model.metadata_lists[-1] if k == "x-request-id"] == upstream
