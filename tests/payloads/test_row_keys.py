"""Row keys: one canonical byte string per scored row, the same however the row is sent."""

from __future__ import annotations

import copy
from typing import Any

import pytest

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
