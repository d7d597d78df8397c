"""The watched inputs a request hands the drift monitors, one value per scored row."""

from __future__ import annotations

from guardproxy.guards.features import LONGEST_TEXT, feature_reader
from guardproxy.payloads import compile_payload
from guardproxy.policy.models import ModelPolicy
from tests.guards.exchanges import exchange

PAYLOAD = compile_payload(ModelPolicy.model_validate({"name": "adult", "protocol": "tfserving"}))


def test_numbers_and_short_text_are_kept_and_missing_inputs_read_none() -> None:
    read = feature_reader(PAYLOAD, ["age", "country", "absent"])
    assert read is not None
    rows = [{"age": 39, "country": "Peru"}, {"age": 50.5, "country": None}]
    assert read(exchange({"instances": rows}), 2) == ((39, 50.5), ("Peru", None), (None, None))


def test_long_text_is_cut_and_objects_are_not_kept() -> None:
    # The monitor queue budgets ~120 bytes a value: a value as long as the body, held until
    # the monitors take it, would let a client hold far more memory than the budget says.
    read = feature_reader(PAYLOAD, ["country"])
    assert read is not None
    rows = [{"country": "x" * 100_000}, {"country": {"nested": ["y"] * 10_000}}, {"country": [1]}]
    (values,) = read(exchange({"instances": rows}), 3)
    assert values == ("x" * LONGEST_TEXT, "<dict>", "<list>")
