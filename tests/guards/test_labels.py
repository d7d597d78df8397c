"""LabelGuard: suppress, block and flag on tagger labels and on chat text."""

from __future__ import annotations

import json
from typing import Any

from guardproxy.guards.base import GuardChain
from guardproxy.guards.chain import GuardContext
from guardproxy.guards.exchange import Exchange, loads
from tests.guards.exchanges import chain, exchange, policy


def tagger(*rows: list[str]) -> dict[str, Any]:
    width = max(len(r) for r in rows)
    data = [label for row in rows for label in row + [""] * (width - len(row))]
    return {
        "outputs": [
            {"name": "tags", "shape": [len(rows), width], "datatype": "BYTES", "data": data}
        ]
    }


def chain_for(labels: dict[str, Any], protocol: str = "kserve_v2") -> GuardChain:
    sections = {"model": {"protocol": protocol}, "labels": {"deny": ["Gorilla", "ape"], **labels}}
    if protocol == "kserve_v2":
        sections["decision"] = {}
        sections["model"]["score"] = {"output": "p"}
    return chain(policy(**sections), GuardContext(), "v1")


async def answer(chain: GuardChain, response: Any) -> Exchange:
    ex = exchange({"inputs": []}, response)
    await chain.on_response(ex)
    return ex


def with_score(doc: dict[str, Any], n: int) -> dict[str, Any]:
    doc["outputs"].append({"name": "p", "shape": [n], "datatype": "FP32", "data": [0.5] * n})
    return doc


async def test_suppress_removes_denied_labels() -> None:
    chain = chain_for({"action": "suppress"})
    ex = await answer(chain, with_score(tagger(["cat", "gorilla"], ["APE", "tree", "dog"]), 2))
    tags = loads(ex.final_response_body())["outputs"][0]
    assert tags["data"] == ["cat", "", "tree", "dog"] and tags["shape"] == [2, 2]
    assert ex.annotations["X-Guard-Labels"] == "suppressed=2"
    assert ex.flags == ["suppressed:ape", "suppressed:gorilla"]
    assert ex.reply is None and chain.errors == {}


async def test_clean_answer_is_untouched() -> None:
    ex = await answer(chain_for({"action": "suppress"}), with_score(tagger(["cat"]), 1))
    assert not ex.response_changed and ex.flags == []


async def test_block_replies_with_policy_status_and_count_only() -> None:
    chain = chain_for({"action": "block", "block": {"status": 451, "message": "withheld"}})
    ex = await answer(chain, with_score(tagger(["gorilla"]), 1))
    assert ex.reply is not None and ex.reply.status == 451 and ex.reply.error == "withheld"
    assert ex.reply.details == {"action": "block", "denied": 1}
    assert "gorilla" not in str(ex.reply.details)


async def test_flag_keeps_answer_and_marks_it() -> None:
    ex = await answer(chain_for({"action": "flag"}), with_score(tagger(["gorilla", "cat"]), 1))
    assert not ex.response_changed
    assert ex.flags == ["label:gorilla"] and ex.annotations["X-Guard-Flag"] == "labels=1"


def chat(*texts: str) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ],
    }


async def test_openai_text_masks_whole_words() -> None:
    chain = chain_for({"action": "suppress"}, "openai")
    assert [g.name for g in chain.guards] == ["labels"]  # no score, no decision guard
    ex = await answer(chain, chat("An Ape and a gorilla, not a grape.", "Fine."))
    texts = [c["message"]["content"] for c in loads(ex.final_response_body())["choices"]]
    assert texts == ["An *** and a *******, not a grape.", "Fine."]
    assert ex.annotations["X-Guard-Labels"] == "suppressed=2"


async def test_a_term_hidden_by_invisible_characters_is_masked_whole() -> None:
    chain = chain_for({"action": "suppress"}, "openai")
    ex = await answer(chain, chat("a gor\u200billa and a go\u00adrilla"))
    texts = [c["message"]["content"] for c in loads(ex.final_response_body())["choices"]]
    assert texts == ["a ******** and a ********"]  # the hidden characters are masked too
    assert ex.flags == ["suppressed:gorilla"]


async def test_every_text_a_client_reads_in_a_chat_message_is_masked() -> None:
    message = {
        "role": "assistant",
        "content": [{"type": "text", "text": "a gorilla"}, {"type": "image_url", "image_url": {}}],
        "refusal": "no ape talk",
        "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "f", "arguments": '{"q": "Ape"}'}}
        ],
        "function_call": {"name": "g", "arguments": '{"q": "gorilla"}'},
    }
    doc = {
        "choices": [{"index": 0, "message": message}, {"index": 1, "message": {"content": None}}]
    }
    ex = await answer(chain_for({"action": "suppress"}, "openai"), doc)
    out = loads(ex.final_response_body())["choices"][0]["message"]
    assert out["content"][0]["text"] == "a *******" and out["refusal"] == "no *** talk"
    assert out["tool_calls"][0]["function"]["arguments"] == '{"q": "***"}'
    assert out["function_call"]["arguments"] == '{"q": "*******"}'
    assert ex.annotations["X-Guard-Labels"] == "suppressed=4"
    blocked = await answer(
        chain_for({"action": "block"}, "openai"),
        {"choices": [{"message": {"content": None, "refusal": "an ape"}}]},
    )
    assert blocked.reply is not None and blocked.reply.details == {"action": "block", "denied": 1}


async def test_terms_written_to_slip_past_are_masked_in_an_answer() -> None:
    chain = chain_for({"action": "suppress"}, "openai")
    wide = "".join(chr(ord(c) + 0xFEE0) for c in "gorilla")  # full-width letters
    ex = await answer(chain, chat(f"a {wide} and an _ape_", "a gor\u202ailla"))
    texts = [c["message"]["content"] for c in loads(ex.final_response_body())["choices"]]
    assert texts == ["a ******* and an _***_", "a ********"]
    assert ex.flags == ["suppressed:ape", "suppressed:gorilla"]


async def test_a_completions_answer_is_read_by_its_text() -> None:
    chain = chain_for({"action": "suppress"}, "openai")
    ex = await answer(chain, {"object": "text_completion", "choices": [{"text": "a gorilla"}]})
    assert loads(ex.final_response_body())["choices"][0]["text"] == "a *******"


async def test_label_failure_fail_closed() -> None:
    chain = chain_for({"on_error": "fail_closed"}, "openai")
    ex = await answer(chain, {"choices": [{"delta": {"content": "a chunk"}}]})
    assert ex.reply is not None and ex.reply.status == 502 and "missing 'message'" in ex.reply.error


async def test_the_output_the_policy_names_holds_the_labels() -> None:
    names = {"name": "names", "shape": [1], "datatype": "BYTES", "data": ["ape"]}
    doc = with_score(tagger(["cat", "gorilla"]), 1)
    doc["outputs"].insert(0, names)  # the first BYTES output is not the labels
    ex = await answer(chain_for({"action": "suppress", "output": "tags"}), doc)
    outputs = {o["name"]: o["data"] for o in loads(ex.final_response_body())["outputs"]}
    assert outputs["names"] == ["ape"] and outputs["tags"] == ["cat"]


async def test_a_term_in_look_alike_letters_is_masked_in_the_characters_that_wrote_it() -> None:
    chain = chain_for({"action": "suppress"}, "openai")
    text = "a g\u043erilla and an \u0410P\u0395, not a \u0433\u043e\u0440\u0438\u043b\u043b\u0430"
    ex = await answer(chain, chat(text))
    [masked] = [c["message"]["content"] for c in loads(ex.final_response_body())["choices"]]
    assert masked == "a ******* and an ***, not a \u0433\u043e\u0440\u0438\u043b\u043b\u0430"
    assert ex.flags == ["suppressed:ape", "suppressed:gorilla"]


async def test_a_clean_text_beside_a_masked_one_is_left_as_written() -> None:
    ex = await answer(
        chain_for({"action": "suppress"}, "openai"), chat("a gorilla", "Caf\u00e9 \u00dc")
    )
    texts = [c["message"]["content"] for c in loads(ex.final_response_body())["choices"]]
    assert texts == ["a *******", "Caf\u00e9 \u00dc"]


def calls(*arguments: str) -> dict[str, Any]:
    """A chat answer whose message calls a tool with each of the arguments, as written."""
    tool_calls = [
        {"id": f"t{i}", "type": "function", "function": {"name": "f", "arguments": a}}
        for i, a in enumerate(arguments)
    ]
    message = {"role": "assistant", "content": None, "tool_calls": tool_calls}
    return {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}


ESCAPED = [
    '{"q": "\\u0067orilla"}',  # a value, as the client's parser reads it: "gorilla"
    '{"\\u0061pe": 1}',  # a key
    '{"q": "gor\\u200billa\\u200b", "n": [1]}',  # a hidden character, escaped, and after
    '{"q": "\\ud835\\udc20orilla"}',  # a mathematical g as a surrogate pair
    "find \\u0067orilla",  # arguments that are not JSON
]


async def test_a_term_spelled_with_json_escapes_in_tool_arguments_is_blocked_and_flagged() -> None:
    blocked = await answer(chain_for({"action": "block"}, "openai"), calls(*ESCAPED))
    assert blocked.reply is not None and blocked.reply.details == {"action": "block", "denied": 5}
    flagged = await answer(chain_for({"action": "flag"}, "openai"), calls(*ESCAPED))
    assert flagged.flags == ["label:ape", "label:gorilla"]
    literal = await answer(
        chain_for({"action": "flag"}, "openai"), calls('{"q": "\\\\u0067orilla"}')
    )
    assert literal.flags == []  # an escaped backslash: the client reads \u0067orilla as written


async def test_masked_tool_arguments_stay_json_of_the_same_length() -> None:
    ex = await answer(chain_for({"action": "suppress"}, "openai"), calls(*ESCAPED))
    message = loads(ex.final_response_body())["choices"][0]["message"]
    written = [call["function"]["arguments"] for call in message["tool_calls"]]
    assert [len(w) for w in written] == [len(a) for a in ESCAPED]
    assert [json.loads(w) for w in written[:4]] == [
        {"q": "*" * 12},
        {"*" * 8: 1},
        {"q": "*" * 19, "n": [1]},
        {"q": "*" * 18},
    ]
    assert written[4] == "find ************"  # not JSON: masked as written
    assert ex.flags == ["suppressed:ape", "suppressed:gorilla"]
