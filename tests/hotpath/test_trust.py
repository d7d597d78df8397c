"""Request ids: a client's well-formed id is kept, anything else replaced."""

from __future__ import annotations

import pytest

from guardproxy.hotpath.trust import MAX_REQUEST_ID, Trust, request_id_of


@pytest.mark.parametrize("value", ["r1", "a.b:c-d_e", "x" * MAX_REQUEST_ID])
def test_well_formed_ids_are_kept(value: str) -> None:
    assert request_id_of(value) == (value, False)


@pytest.mark.parametrize(
    "value", ["x" * (MAX_REQUEST_ID + 1), "a b", "a\tb", "r1\u2028", "<script>", "a/b", "é"]
)
def test_odd_ids_are_replaced_and_reported(value: str) -> None:
    new, replaced = request_id_of(value)
    assert replaced and new != value and len(new) == 32


def test_no_id_gets_a_new_one_without_counting() -> None:
    new, replaced = request_id_of(None)
    assert not replaced and len(new) == 32


def test_only_a_named_region_header_has_a_lookup_key() -> None:
    assert Trust().region_key is None
    assert Trust(region_header="X-Region").region_key == b"x-region"
