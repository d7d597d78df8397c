"""Row keys: one canonical byte string per scored row, the same however the row is sent."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from guardproxy.payloads.canonical import short_name
from guardproxy.payloads.errors import PayloadError
from tests.payloads.test_payloads import V2_REQUEST, preset


def keys(protocol: str, doc: Any, rows: int) -> list[bytes]:
    return preset(protocol, path="$.s").row_keys(doc, rows)


def test_v2_rows_are_distinct_and_ignore_ids_order_and_number_spelling() -> None:
    base = keys("kserve_v2", V2_REQUEST, 3)
    assert len(set(base)) == 3
    other = copy.deepcopy(V2_REQUEST)
    other["id"] = "retry-17"
    other["parameters"] = {"anything": "at all"}
    other["inputs"].reverse()
    other["inputs"][-1]["data"] = [39.0, 50.0, -0.0 + 38]  # the age input, now last
    other["inputs"][-1]["datatype"] = "FP64"
    assert keys("kserve_v2", other, 3) == base


def test_v2_a_changed_feature_is_another_row() -> None:
    changed = copy.deepcopy(V2_REQUEST)
    changed["inputs"][0]["data"][1] = 51
    got = keys("kserve_v2", changed, 3)
    assert (
        got[0] == keys("kserve_v2", V2_REQUEST, 3)[0]
        and got[1] != keys("kserve_v2", V2_REQUEST, 3)[1]
    )


SPLIT = {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}
SPLIT_REORDERED = {"columns": ["b", "a"], "data": [["x", 1], ["y", 2]], "index": [9, 8]}
COLUMNS = {"a": [1, 2], "b": ["x", "y"]}
SAME_TABLES = [
    ("tfserving", {"instances": [{"a": 1, "b": "x"}]}, {"instances": [{"b": "x", "a": 1.0}]}),
    ("tfserving", {"inputs": COLUMNS}, {"inputs": {"b": ["x", "y"], "a": [1.0, 2]}}),
    ("mlflow", {"dataframe_split": SPLIT}, {"dataframe_split": SPLIT_REORDERED}),
    (
        "seldon_v1",
        {"data": {"ndarray": [[1, 2], [3, 4]]}},
        {"data": {"ndarray": [[1, 2.0], [3, 4]]}},
    ),
]


@pytest.mark.parametrize(("protocol", "first", "second"), SAME_TABLES)
def test_table_protocols_key_rows_by_content(protocol: str, first: Any, second: Any) -> None:
    rows = 1 if "instances" in first else 2
    assert keys(protocol, first, rows) == keys(protocol, second, rows)
    assert len(set(keys(protocol, first, rows))) == rows


def test_row_count_mismatch_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="rows in the request"):
        keys("tfserving", {"instances": [{"a": 1}]}, 2)


def test_without_rows_the_whole_request_is_the_subject() -> None:
    got = keys("jsonpath", {"a": 1, "b": [1, 2]}, 2)
    assert got[0] == keys("jsonpath", {"b": [1.0, 2], "a": 1.0}, 1)[0] and got[1] == got[0] + b"#1"


class ScannedList(list[Any]):
    """A list of column names counting the names `in` scans."""

    scanned = 0

    def __contains__(self, value: object) -> bool:
        type(self).scanned += len(self)
        return super().__contains__(value)


def test_v2_the_requests_column_names_are_scanned_once_per_feature() -> None:
    # Scanned per input, 8,000 inputs and 8,000 names held the loop 0.4 s.
    names = ScannedList(f"c{j}" for j in range(1000))
    inputs = [
        {"name": f"t{i}", "shape": [1], "datatype": "FP32", "data": [1.0]} for i in range(1000)
    ]
    doc = {"inputs": inputs, "parameters": {"columns": names}}
    ScannedList.scanned = 0
    with pytest.raises(PayloadError, match="no input or column named 'sex'"):
        preset("kserve_v2", output="s").feature(doc, "sex")
    assert ScannedList.scanned <= len(names)
    own = {"parameters": {"columns": ["p"]}}  # inputs naming their own columns, then a table
    table = {"name": "table", "shape": [1, 2], "datatype": "FP32", "data": [[1.0, 2.0]]}
    doc["inputs"] = [*({**t, **own} for t in inputs), table]
    doc["parameters"]["columns"] = ScannedList(["a", "b"])
    ScannedList.scanned = 0
    assert preset("kserve_v2", output="s").feature(doc, "b") == [2.0]
    assert ScannedList.scanned <= 2


def test_content_every_row_shares_is_in_each_key_as_a_digest() -> None:
    # A batch of 1,000 rows and an input of 20,000 values they all share: copied into every
    # key, that was 80 MB of keys from a 130 KB request (and ~160 GB at the body limit).
    rows, shared = [float(i) for i in range(1000)], [2.0] * 20_000
    doc = {
        "inputs": [
            {"name": "x", "shape": [1000], "datatype": "FP32", "data": rows},
            {"name": "context", "shape": [20_000], "datatype": "FP32", "data": shared},
        ]
    }
    got = keys("kserve_v2", doc, 1000)
    assert len(set(got)) == 1000 and sum(map(len, got)) < 100 * 1000
    changed = copy.deepcopy(doc)
    changed["inputs"][1]["data"][-1] = 3.0  # shared content is still content: every key moves
    assert not set(keys("kserve_v2", changed, 1000)) & set(got)
    respelled = copy.deepcopy(doc)
    respelled["inputs"][1]["data"] = [2] * 20_000
    assert keys("kserve_v2", respelled, 1000) == got


def test_table_columns_every_row_shares_are_a_digest_too() -> None:
    columns = {"a": [1, 2], "context": list(range(10_000))}
    got = keys("tfserving", {"inputs": columns}, 2)
    assert len(set(got)) == 2 and sum(map(len, got)) < 200
    other = {"inputs": {**columns, "context": [*range(9_999), -1]}}
    assert not set(keys("tfserving", other, 2)) & set(got)


def test_a_long_subject_stands_as_its_digest_in_every_rows_key() -> None:
    doc = {"a": list(range(10_000))}
    got = keys("jsonpath", doc, 1000)
    assert len(set(got)) == 1000 and sum(map(len, got)) < 40 * 1000
    assert got[1] == got[0] + b"#1" and got == keys(
        "jsonpath", {"a": [float(i) for i in range(10_000)]}, 1000
    )
    assert keys("jsonpath", {"a": [*range(9_999), -1]}, 1)[0] != got[0]


def test_keys_of_short_names_are_as_they_were() -> None:
    # Draws already made must not move: only names past SHORT characters changed form.
    assert keys("kserve_v2", V2_REQUEST, 3)[0] == (
        b'{"age":[39.0],"sex":["Male"],"tabular":{"capital":2174.0,"hours":40.0}}'
    )
    assert keys("mlflow", {"dataframe_split": SPLIT}, 2)[1] == b'{"a":2.0,"b":"y"}'
    assert keys("tfserving", {"inputs": COLUMNS}, 2)[0] == b'{"a":1.0,"b":"x"}'


LONG = "A" * 10_000


def long_named(protocol: str, name: str, rows: int) -> Any:
    """A request of `rows` rows whose one input or column is named `name`."""
    if protocol == "tfserving":
        return {"inputs": {name: list(range(rows))}}
    if protocol == "mlflow":
        return {"dataframe_split": {"columns": [name, "b"], "data": [[i, 0] for i in range(rows)]}}
    if protocol == "seldon_v1":
        return {"data": {"names": [name, "b"], "ndarray": [[i, 0] for i in range(rows)]}}
    shared = {"parameters": {"columns": [name, "b"]}}
    data = [[i, 0] for i in range(rows)]
    return {**shared, "inputs": [{"name": name, "shape": [rows, 2], "data": data}]}


@pytest.mark.parametrize("protocol", ["kserve_v2", "tfserving", "mlflow", "seldon_v1"])
def test_a_long_name_stands_as_its_digest_in_every_rows_key(protocol: str) -> None:
    # A 100 KB name in each of 4,000 rows' keys: 400 MB of keys from a 108 KB body.
    got = keys(protocol, long_named(protocol, LONG, 200), 200)
    assert len(set(got)) == 200 and sum(map(len, got)) < 200 * 200
    assert got == keys(protocol, long_named(protocol, LONG, 200), 200)
    assert not set(got) & set(keys(protocol, long_named(protocol, LONG + "B", 200), 200))
    spelled = keys(protocol, long_named(protocol, short_name(LONG), 200), 200)
    assert not set(got) & set(spelled)  # a name cannot spell another's digest


class Named:
    """A column name that is not a string, counting how often it is rendered."""

    rendered = 0

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        type(self).rendered += 1
        return self.text


def test_column_names_are_rendered_once_per_request_not_once_per_row() -> None:
    names = [Named("a"), Named("b")]
    split = {"dataframe_split": {"columns": names, "data": [[i, 0] for i in range(100)]}}
    Named.rendered = 0
    assert keys("mlflow", split, 100)[1] == b'{"a":1.0,"b":0.0}'
    assert Named.rendered == 2
    data = [[i, 0] for i in range(100)]
    v2 = {
        "parameters": {"columns": names},
        "inputs": [{"name": "x", "shape": [100, 2], "data": data}],
    }
    Named.rendered = 0
    assert keys("kserve_v2", v2, 100)[1] == b'{"x":{"a":1.0,"b":0.0}}'
    assert Named.rendered == 2


def test_inputs_with_no_values_per_row_are_shared_content_not_in_each_key() -> None:
    # Inputs of shape [rows, 0]: ~40 body bytes each, and a copy of each name in every key.
    empty = [{"name": f"e{i}", "shape": [200, 0], "data": []} for i in range(100)]
    doc = {"inputs": [{"name": "x", "shape": [200], "data": list(range(200))}, *empty]}
    got = keys("kserve_v2", doc, 200)
    assert len(set(got)) == 200 and sum(map(len, got)) < 100 * 200
