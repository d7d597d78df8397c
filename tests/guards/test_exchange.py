"""Exchange built from decoded documents (gRPC): guards read them, samples keep them."""

from __future__ import annotations

import sys
import time

from guardproxy.guards.base import GuardChain
from guardproxy.guards.chain import GuardContext
from guardproxy.guards.exchange import Exchange, dumps, is_json_answer
from guardproxy.policy.models import OnError
from guardproxy.sampling.sinks import SampleQueue
from guardproxy.transport import Headers
from tests.guards.exchanges import chain, exchange, policy, v2_answer, v2_request

SECTIONS = {
    "groups": {"values": ["female", "male"], "attribute": {"input": "sex"}},
    "model": {"score": {"output": "score"}},
    "decision": {"threshold": 0.5, "per_group": {"female": 0.4}},
    "labels": {"deny": ["gorilla"], "action": "suppress", "output": "predict"},
    "sampling": {"rate": 1.0},
}


def decoded(request: object) -> Exchange:
    return Exchange.from_documents(
        "r-1", "sg", "adult", "ModelInfer", "/inference.GRPCInferenceService/ModelInfer",
        Headers([]), request, time.perf_counter(),
    )  # fmt: skip


async def test_guards_decide_a_decoded_exchange_as_they_decide_json_bytes() -> None:
    queue = SampleQueue()
    guards = chain(policy(**SECTIONS), GuardContext(samples=queue))
    from_json = exchange(v2_request("female", "male"), v2_answer(0.45, 0.45))
    from_docs = decoded(v2_request("female", "male"))
    assert not is_json_answer(from_docs)  # no answer yet
    from_docs.set_response_document(200, v2_answer(0.45, 0.45))
    assert is_json_answer(from_docs)
    for ex in (from_json, from_docs):
        await guards.on_request(ex)
        await guards.on_response(ex)
    assert from_docs.verdicts == from_json.verdicts
    assert from_docs.annotations == from_json.annotations
    assert (from_docs.body, from_docs.response_body) == (b"", b"")  # nothing serialised
    json_sample, docs_sample = queue.queue.get_nowait(), queue.queue.get_nowait()
    assert docs_sample.request == v2_request("female", "male")
    assert docs_sample.response == v2_answer(0.45, 0.45)
    assert json_sample.request == dumps(v2_request("female", "male"))


async def test_a_changed_decoded_answer_is_the_document_the_guards_left() -> None:
    guards = chain(policy(**SECTIONS))
    ex = decoded(v2_request("female"))
    answer = v2_answer(0.45)
    labels = {"name": "predict", "shape": [1], "datatype": "BYTES", "data": ["gorilla"]}
    answer["outputs"][1] = labels
    ex.set_response_document(200, answer)
    await guards.on_request(ex)
    await guards.on_response(ex)
    assert ex.response_changed
    assert ex.response_json()["outputs"][1]["data"] == [""]
    assert ex.response_record() is ex.response_json()


def test_an_errored_decoded_exchange_has_no_answer_to_read() -> None:
    ex = decoded(v2_request("female"))
    ex.status = 503
    assert not is_json_answer(ex)
    assert ex.response_record() == b""


class Hooks:
    """A guard recording which of its hooks ran; `idle` names those the chain may skip."""

    name = "hooks"
    on_error: OnError = "fail_open"

    def __init__(self, idle: frozenset[str] = frozenset()) -> None:
        self.idle, self.ran = idle, list[str]()

    async def on_request(self, ex: Exchange) -> None:
        self.ran.append("request")

    async def on_response(self, ex: Exchange) -> None:
        self.ran.append("response")


async def test_a_chain_skips_only_the_hooks_a_guard_names_idle() -> None:
    busy, quiet, deaf = Hooks(), Hooks(frozenset({"request"})), Hooks(frozenset({"response"}))
    guards = GuardChain([busy, quiet, deaf])
    ex = exchange(v2_request("female"), v2_answer(0.5))
    await guards.on_request(ex)
    await guards.on_response(ex)
    assert (busy.ran, quiet.ran, deaf.ran) == (["request", "response"], ["response"], ["request"])


def test_an_answered_exchange_forgets_its_answer_and_documents() -> None:
    # A client slow to read a large answer then keeps only the transport's copy of it alive.
    ex = exchange(v2_request("female"), v2_answer(0.7))
    answer, request_doc, answer_doc = ex.response_body, ex.request_json(), ex.response_json()
    held = [sys.getrefcount(x) for x in (answer, request_doc, answer_doc)]
    ex.forget_bodies()
    assert ex.response_body == b""
    assert [sys.getrefcount(x) for x in (answer, request_doc, answer_doc)] == [n - 1 for n in held]
