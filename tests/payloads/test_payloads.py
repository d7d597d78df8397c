"""Protocol presets: real payloads of each protocol, single rows and batches."""

from __future__ import annotations

from typing import Any

import pytest

from guardproxy.payloads import JsonPath, Payload, compile_payload
from guardproxy.payloads.errors import AmbiguousInput, PayloadError, TooManyValues
from guardproxy.policy.models import ModelPolicy


def preset(protocol: str, labels: dict[str, Any] | None = None, **score: Any) -> Payload:
    routes = ["/**"] if protocol == "jsonpath" else []
    model = ModelPolicy.model_validate(
        {
            "name": "m",
            "protocol": protocol,
            "routes": routes,
            "score": score,
            "labels": labels or {},
        }
    )
    return compile_payload(model)


V2_REQUEST: dict[str, Any] = {
    "inputs": [
        {"name": "age", "shape": [3], "datatype": "INT64", "data": [39, 50, 38]},
        {
            "name": "sex",
            "shape": [3, 1],
            "datatype": "BYTES",
            "data": [["Male"], ["Female"], ["Male"]],
        },
        {
            "name": "tabular",
            "shape": [3, 2],
            "datatype": "FP32",
            "parameters": {"columns": ["hours", "capital"]},
            "data": [40, 2174, 13, 0, 40, 0],
        },
    ]
}
V2_PROBA: dict[str, Any] = {
    "model_name": "adult",
    "outputs": [
        {"name": "predict", "shape": [3], "datatype": "INT64", "data": [0, 1, 0]},
        {
            "name": "predict_proba",
            "shape": [3, 2],
            "datatype": "FP32",
            "data": [[0.9, 0.1], [0.3, 0.7], [0.55, 0.45]],
        },
    ],
}


def test_v2_rows_features_and_columns() -> None:
    payload = preset("kserve_v2")
    assert payload.feature(V2_REQUEST, "age") == [39, 50, 38]
    assert payload.feature(V2_REQUEST, "sex") == ["Male", "Female", "Male"]
    assert payload.feature(V2_REQUEST, "capital") == [2174, 0, 0]
    with pytest.raises(PayloadError, match="no input or column named 'race'"):
        payload.feature(V2_REQUEST, "race")


def test_v2_features_of_odd_inputs_are_errors_the_guards_read() -> None:
    payload = preset("kserve_v2")
    twice = {"inputs": [*V2_REQUEST["inputs"], V2_REQUEST["inputs"][0]]}
    with pytest.raises(AmbiguousInput, match="'age' is given more than once"):
        payload.group_feature(twice, "age")
    assert payload.feature(twice, "age") == [39, 50, 38]  # drift reads the first: no threshold
    not_objects = {"parameters": {"columns": ["age", "sex"]}, "inputs": [5, "x"]}
    with pytest.raises(PayloadError, match="no input or column named 'age'"):
        payload.feature(not_objects, "age")  # once an AttributeError: a 500 and a lost row


def test_v2_scores_by_output_and_column() -> None:
    assert preset("kserve_v2", output="predict_proba", index=1).scores(V2_PROBA) == pytest.approx(
        [0.1, 0.7, 0.45]
    )
    assert preset("kserve_v2").scores(V2_PROBA) == [0.0, 1.0, 0.0]  # the first output
    single = {"outputs": [{"name": "score", "shape": [1, 1], "datatype": "FP32", "data": [0.62]}]}
    assert preset("kserve_v2", output="score").scores(single) == [pytest.approx(0.62)]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"outputs": [{"name": "other", "shape": [1], "data": [1]}]}, "no output 'score'"),
        ({"outputs": [{"name": "score", "shape": [2], "data": [0.1]}]}, "1 values for shape"),
        ({"outputs": [{"name": "score", "shape": [1], "data": ["high"]}]}, "not a number"),
        ({"outputs": {"name": "score"}}, "expected a list"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_v2_bad_answers_raise_guard_errors(answer: Any, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        preset("kserve_v2", output="score").scores(answer)


def test_v2_labels_suppress_and_annotate() -> None:
    payload = preset("kserve_v2")
    answer = {
        "outputs": [
            {
                "name": "tags",
                "shape": [2, 2],
                "datatype": "BYTES",
                "data": ["cat", "gorilla", "dog", "tree"],
            }
        ]
    }
    assert payload.labels(answer) == [["cat", "gorilla"], ["dog", "tree"]]
    payload.set_labels(answer, [["cat"], ["dog", "tree"]])
    assert answer["outputs"][0] == {
        "name": "tags",
        "shape": [2, 2],
        "datatype": "BYTES",
        "data": ["cat", "", "dog", "tree"],
    }
    payload.annotate(answer, [1, 0], [0.5, 0.45])
    assert answer["outputs"][-2] == {
        "name": "guardproxy",
        "shape": [2],
        "datatype": "INT64",
        "data": [1, 0],
    }
    assert answer["outputs"][-1]["datatype"] == "FP32"


def test_v2_rewrite_replaces_predict() -> None:
    answer = {"outputs": [dict(o) for o in V2_PROBA["outputs"]]}
    preset("kserve_v2").rewrite(answer, [1, 1, 0])
    assert answer["outputs"][0]["data"] == [1, 1, 0]
    with pytest.raises(PayloadError, match="no label output named label or predict"):
        preset("kserve_v2").rewrite({"outputs": [V2_PROBA["outputs"][1]]}, [1, 1, 0])


def test_tfserving_rows_columns_and_predictions() -> None:
    payload = preset("tfserving", output="probabilities", index=1)
    request = {"instances": [{"age": 39, "sex": "Male"}, {"age": 50, "sex": "Female"}]}
    assert payload.feature(request, "sex") == ["Male", "Female"]
    columnar = {"inputs": {"age": [[39], [50]], "sex": ["Male", "Female"]}}
    assert payload.feature(columnar, "age") == [39, 50]
    answer = {"predictions": [{"probabilities": [0.8, 0.2]}, {"probabilities": [0.1, 0.9]}]}
    assert payload.scores(answer) == pytest.approx([0.2, 0.9])
    assert preset("tfserving").scores({"predictions": [[0.3], [0.8]]}) == pytest.approx([0.3, 0.8])
    assert preset("tfserving", output="p").scores({"outputs": {"p": [0.4]}}) == [0.4]
    with pytest.raises(PayloadError, match=r"no feature named .age."):
        preset("tfserving").feature({"instances": [[1, 2]]}, "age")


def test_tfserving_rewrite_and_annotate() -> None:
    answer: dict[str, Any] = {"predictions": [0.2, 0.9]}
    payload = preset("tfserving")
    payload.annotate(answer, [0, 1], [0.5, 0.5])
    assert answer["guardproxy"] == {"decisions": [0, 1], "thresholds": [0.5, 0.5]}
    payload.rewrite(answer, [0, 1])
    assert answer["predictions"] == [0, 1]


def test_a_group_column_named_twice_is_ambiguous() -> None:
    split = {"dataframe_split": {"columns": ["sex", "sex"], "data": [["Female", "Male"]]}}
    with pytest.raises(AmbiguousInput, match="column 'sex' is given more than once"):
        preset("mlflow").group_feature(split, "sex")
    seldon = {"data": {"names": ["sex", "age", "sex"], "ndarray": [["Female", 3, "Male"]]}}
    with pytest.raises(AmbiguousInput):
        preset("seldon_v1").group_feature(seldon, "sex")
    once = {"data": {"names": ["sex"], "ndarray": [["M"]]}}
    assert preset("seldon_v1").group_feature(once, "sex") == ["M"]


def test_mlflow_dataframe_split_records_and_bare_list() -> None:
    payload = preset("mlflow")
    split = {"dataframe_split": {"columns": ["age", "sex"], "data": [[39, "Male"], [50, "Female"]]}}
    assert payload.feature(split, "sex") == ["Male", "Female"]
    records = {"dataframe_records": [{"age": 39, "sex": "Male"}]}
    assert payload.feature(records, "age") == [39]
    assert payload.scores([0.25, 0.75]) == [0.25, 0.75]
    assert payload.scores({"predictions": [0.25]}) == [0.25]
    bare = [0.25, 0.75]
    payload.rewrite(bare, [0, 1])
    assert bare == [0, 1]


def test_seldon_ndarray_tensor_and_names() -> None:
    payload = preset("seldon_v1", output="proba_1")
    request = {"data": {"names": ["age", "sex"], "ndarray": [[39, "Male"], [50, "Female"]]}}
    assert payload.feature(request, "age") == [39, 50]
    answer = {"data": {"names": ["proba_0", "proba_1"], "ndarray": [[0.8, 0.2], [0.3, 0.7]]}}
    assert payload.scores(answer) == pytest.approx([0.2, 0.7])
    tensor = {"data": {"tensor": {"shape": [2, 2], "values": [0.8, 0.2, 0.3, 0.7]}}}
    assert preset("seldon_v1", index=1).scores(tensor) == pytest.approx([0.2, 0.7])
    assert "tensor" in tensor["data"]  # reading never changes the answer
    preset("seldon_v1").rewrite(tensor, [0, 1])
    assert tensor["data"] == {"ndarray": [[0], [1]], "names": ["decision"]}


def test_openai_texts_and_no_score() -> None:
    payload = preset("openai")
    answer: dict[str, Any] = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi there"}},
            {"index": 1, "message": {"role": "assistant", "content": None}},
        ]
    }
    assert payload.texts
    assert payload.labels(answer) == [["Hi there"], []]
    payload.set_labels(answer, [["Hi ****"], []])
    assert answer["choices"][0]["message"]["content"] == "Hi ****"
    assert answer["choices"][1]["message"]["content"] is None
    assert payload.feature({"model": "m", "metadata": {"group": "a"}, "n": 2}, "group") == [
        "a",
        "a",
    ]
    with pytest.raises(PayloadError, match="carry no score"):
        payload.scores(answer)


def test_a_responses_api_answer_is_read_where_a_client_reads_its_texts() -> None:
    payload = preset("openai")
    answer: dict[str, Any] = {
        "object": "response",
        "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "Hi there", "annotations": []},
                {"type": "refusal", "refusal": "not that"},
            ]},
            {"type": "function_call", "name": "f", "call_id": "c", "arguments": '{"q": "x"}'},
            {"type": "custom_tool_call", "name": "g", "call_id": "d", "input": "raw"},
            {"type": "web_search_call", "status": "completed"},
        ],
    }  # fmt: skip
    rows = [["thinking"], ["Hi there"], ["not that"], ['{"q": "x"}'], ["raw"]]
    assert payload.labels(answer) == rows and payload.json_rows(answer) == {3}
    payload.set_labels(answer, [["t"], ["Hi *****"], ["n"], ['{"q": "*"}'], ["r"]])
    assert answer["output"][1]["content"][0]["text"] == "Hi *****"
    assert answer["output"][2]["arguments"] == '{"q": "*"}'
    assert payload.labels({"object": "response", "output": []}) == []
    joined = {"output": [], "output_text": "a joined text"}  # as the SDK shows it
    assert payload.labels(joined) == [["a joined text"]]
    with pytest.raises(PayloadError, match="choices"):
        payload.labels({"object": "response", "output": "not a list"})


def test_an_anthropic_message_is_read_where_a_client_reads_its_texts() -> None:
    payload = preset("openai")
    tool_input = {"q": "a", "arguments": "\\u0067", "deep": [{"x": ["b", 1, None]}]}
    answer: dict[str, Any] = {
        "type": "message", "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Hi there"},
            {"type": "tool_use", "id": "t", "name": "search", "input": tool_input},
            {"type": "redacted_thinking", "data": "opaque"},
        ],
    }  # fmt: skip
    rows = [["hmm"], ["Hi there"], ["a"], ["\\u0067"], ["b"]]
    assert payload.labels(answer) == rows
    assert payload.json_rows(answer) == frozenset()  # a tool's input arrives parsed
    payload.set_labels(answer, [["h"], ["Hi *****"], ["*"], ["u"], ["*"]])
    assert answer["content"][1]["text"] == "Hi *****"
    assert tool_input == {"q": "*", "arguments": "u", "deep": [{"x": ["*", 1, None]}]}
    deep: Any = "bottom"
    for _ in range(5_000):  # nested deeper than Python recurses
        deep = [deep]
    nested = {"type": "message", "content": [{"type": "tool_use", "input": {"x": deep}}]}
    assert payload.labels(nested) == [["bottom"]]
    many = {"type": "message", "content": [{"type": "tool_use", "input": ["a"] * 1_000_000}]}
    with pytest.raises(TooManyValues):  # counted as it is walked, not built first
        payload.labels(many)


def test_jsonpath_protocol_scores_labels_and_rewrite() -> None:
    payload = preset("jsonpath", {"path": "$.results[*].tags"}, path="$.results[*].score")
    answer = {"results": [{"score": 0.3, "tags": ["a", "b"]}, {"score": 0.8, "tags": "c"}]}
    assert payload.scores(answer) == [0.3, 0.8]
    assert payload.labels(answer) == [["a", "b"], ["c"]]
    payload.set_labels(answer, [["a"], []])
    assert answer["results"] == [{"score": 0.3, "tags": ["a"]}, {"score": 0.8, "tags": ""}]
    with pytest.raises(ValueError, match=r"needs model.score.path or labels.path"):
        preset("jsonpath")


def test_jsonpath_subset() -> None:
    doc: dict[str, Any] = {
        "inputs": [{"name": "ssn", "data": ["x"]}, {"name": "age", "data": [4]}],
        "a-b": {"c": 1},
    }
    assert JsonPath("$.inputs[?name=='ssn']").find(doc) == [doc["inputs"][0]]
    assert JsonPath("$.inputs[?(@.name=='age')].data[0]").find(doc) == [4]
    assert JsonPath("$['a-b'].c").find(doc) == [1]
    assert JsonPath("$.inputs[*].name").find(doc) == ["ssn", "age"]
    assert JsonPath("$.inputs[-1].name").find(doc) == ["age"]
    assert JsonPath("$.missing[0]").find(doc) == []
    for bad in ("inputs", "$.inputs[", "$..x", "$.a[?x>1]"):
        with pytest.raises(ValueError, match="JSON path"):
            JsonPath(bad)


class Counted(list[Any]):
    """A list that counts how many of its items were read."""

    reads = 0

    def __getitem__(self, index: Any) -> Any:
        Counted.reads += 1
        return super().__getitem__(index)


@pytest.mark.parametrize("path", ["$.rows[*].sex", "$.rows[?kind=='a'].sex", "$.d.*"])
def test_a_limited_search_reads_no_more_than_it_needs(path: str) -> None:
    rows = Counted({"kind": "a", "sex": "F"} for _ in range(1000))
    doc = {"rows": rows, "d": {f"k{i}": i for i in range(1000)}}
    Counted.reads = 0
    found = JsonPath(path).find(doc, 3)
    assert len(found) == 3 and Counted.reads <= 3
    assert len(JsonPath(path).find(doc)) == 1000  # without a limit: every one
