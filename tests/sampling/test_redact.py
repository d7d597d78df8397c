"""Redactor: detectors, configured fields and paths, on documents and text."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardproxy.payloads.codec import dumps
from guardproxy.sampling.redact import (
    CLEAN_CHARS,
    CLEAN_STRINGS,
    TRUNCATED,
    Redactor,
    luhn_valid,
    thai_id_valid,
)

ALL = ("email", "phone", "card", "national_id")


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("write to ana.lim+x@example.com.sg", "email"),
        ("call +65 6123 4567", "phone"),
        ("call (555) 123-4567", "phone"),
        ("call 555-123-4567", "phone"),
        ("card 4111 1111 1111 1111", "card"),
        ("card 5500-0000-0000-0004", "card"),
        ("ssn 123-45-6789", "national_id"),
        ("nric S1234567D", "national_id"),
        ("nik 3174051203900001", "national_id"),
        ("thai 1101700230708", "national_id"),
        ("mail=ana.lim%40example.com", "email"),
        ("card 4111.1111.1111.1111", "card"),
        ("call 0812-3456-7890", "phone"),
        ("call 020 7946 0958", "phone"),
        ("call 9123 4567", "phone"),
    ],
)
def test_detectors_mask_by_kind(text: str, kind: str) -> None:
    masked = Redactor((), ALL).text(text)
    assert masked.endswith(f"[REDACTED:{kind}]")
    assert not any(ch.isdigit() for ch in masked.split()[-1])


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",
        "card 4111.1111.1111.1112",
        "thai 1101700230705",
        "age 42 on 2024-01-05",
        "id 12345",
        "score 0.4111111111111111",  # a decimal: one dot
        "from 192.168.100.200",
        "version 2026.11.30",
        "1234 5678 items",  # eight digits, not from 6, 8 or 9
    ],
)
def test_lookalikes_are_kept(text: str) -> None:
    assert Redactor((), ALL).text(text) == text


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert thai_id_valid("1101700230708") and not thai_id_valid("1101700230705")


def test_only_chosen_detectors_run() -> None:
    assert Redactor((), ("email",)).text("a@b.co 555-123-4567") == "[REDACTED:email] 555-123-4567"
    with pytest.raises(ValueError, match="unknown detectors: iban"):
        Redactor((), ("iban",))


def test_fields_and_paths_on_documents() -> None:
    redactor = Redactor(("ssn", "$.inputs[?name=='income'].data", "$.meta.note"), ())
    doc: dict[str, Any] = {
        "inputs": [
            {"name": "ssn", "shape": [1], "datatype": "BYTES", "data": ["999-88-7777"]},
            {"name": "income", "shape": [2], "datatype": "FP32", "data": [52000, 61000]},
            {"name": "age", "shape": [1], "datatype": "INT64", "data": [41]},
        ],
        "meta": {"note": "vip", "user": {"ssn": "x"}},
    }
    out = redactor.document(doc)
    assert out["inputs"][0]["data"] == ["[REDACTED:ssn]"]
    assert out["inputs"][1]["data"] == ["[REDACTED:income]", "[REDACTED:income]"]
    assert out["inputs"][2]["data"] == [41]
    assert out["meta"] == {"note": "[REDACTED:note]", "user": {"ssn": "[REDACTED:ssn]"}}
    assert doc["inputs"][0]["data"] == ["999-88-7777"]  # the original is left as it was


def test_filter_path_keeps_tensor_metadata() -> None:
    out = Redactor(("$.inputs[?name=='ssn']",), ()).document(
        {"inputs": [{"name": "ssn", "shape": [1], "datatype": "BYTES", "data": ["1"]}]}
    )
    assert out["inputs"][0] == {
        "name": "ssn",
        "shape": [1],
        "datatype": "BYTES",
        "data": ["[REDACTED:ssn]"],
    }


def test_bodies_json_or_text() -> None:
    redactor = Redactor((), ALL)
    assert redactor.body(b'{"n": 4111111111111111, "ok": 7}') == {"n": "[REDACTED:card]", "ok": 7}
    assert redactor.body(b"mail me at a@b.io") == "mail me at [REDACTED:email]"
    assert redactor.body(b"") is None


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("reach me: a@b.co", "email"),  # one "@" is enough to run the detectors
        ("tel 555-123-4567 ok", "phone"),  # digits spread across separators
        ("card 4111 1111 1111 1111", "card"),
    ],
)
def test_prefilter_lets_every_candidate_reach_the_detectors(text: str, kind: str) -> None:
    assert f"[REDACTED:{kind}]" in Redactor((), ("email", "phone", "card")).text(text)


def test_numbers_in_tensors_pass_through_unchanged() -> None:
    data = [0.5, 1.25, True, None, 3.0] * 200
    doc = {"outputs": [{"name": "score", "datatype": "FP32", "data": data}]}
    assert Redactor((), ("email", "phone", "card", "national_id")).document(doc) == doc


def test_binary_values_of_a_decoded_document_are_kept_out() -> None:
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "data": [b"\xff\xd8\x00", "a@b.co"]}]}
    redacted = Redactor((), ALL).document(doc)
    assert redacted["inputs"][0]["data"] == ["[BINARY:3 bytes]", "[REDACTED:email]"]
    assert doc["inputs"][0]["data"][0] == b"\xff\xd8\x00"  # the original is left as it was


# Units that made the detectors backtrack (runs of word characters, digits, dots, "@"), and
# others near each detector's syntax. Repeated to 10 KB and 100 KB, a linear redactor takes
# about 10 times as long on the larger; a quadratic one about 100 times.
ADVERSARIAL = [
    "a",
    "1",
    "a@",
    "@a",
    "a.",
    "1-",
    "+1",
    "+1 ",
    "x@b",
    "1 ",
    "a-",
    "(1",
    ".@",
    "_",
    "a%40",
    "12.",
    "01 ",
]


def _seconds(redactor: Redactor, text: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        redactor.text(text)
        best = min(best, time.perf_counter() - started)
    return best


def _growth(unit: str) -> float:
    redactor = Redactor((), ALL, max_bytes=1 << 20)
    small = ("1234 " + unit * (10_000 // len(unit)))[:10_000]  # digits: past the prefilter
    large = ("1234 " + unit * (100_000 // len(unit)))[:100_000]
    return _seconds(redactor, large, 3) / max(_seconds(redactor, small, 5), 1e-6)


@pytest.mark.parametrize("unit", ADVERSARIAL)
def test_redaction_work_grows_linearly_on_adversarial_text(unit: str) -> None:
    assert _growth(unit) < 30, f"10x the text took {_growth(unit):.0f}x the time"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="a1@.+-_ ()#%", min_size=1, max_size=6))
def test_redaction_work_grows_linearly_on_any_repeated_unit(unit: str) -> None:
    assert _growth(unit) < 30


def test_long_text_is_cut_at_a_separator_before_redaction_and_marked() -> None:
    redactor = Redactor((), ALL, max_bytes=1000)
    text = "x " * 480 + "contact ana.lim@example.com now " + "y" * 5000
    masked = redactor.text(text)
    assert masked.endswith(TRUNCATED) and len(masked) <= 1000 + len(TRUNCATED)
    assert "ana.lim" not in masked and "exam" not in masked and redactor.truncated == 1


def test_an_oversized_body_keeps_a_redacted_head_or_is_withheld() -> None:
    body = ('{"note": "mail ana.lim@example.com", "pad": "' + "z " * 5000 + '"}').encode()
    head = Redactor((), ALL, max_bytes=2048).body(body)
    assert head["truncated"] is True and head["bytes"] == len(body)
    assert "[REDACTED:email]" in head["text"] and "ana.lim" not in head["text"]
    withheld = Redactor(("note",), ALL, max_bytes=2048).body(body)
    assert withheld["text"] is None and "named fields" in withheld["withheld"]


def test_deep_documents_and_large_answers_stay_bounded() -> None:
    deep: Any = "ana.lim@example.com"
    for _ in range(3000):
        deep = [deep]
    assert Redactor((), ALL).document(deep) == "[REDACTED:too deep]"
    answer = {"outputs": [{"name": "t", "data": ["ana.lim@example.com " * 10] * 100}]}
    cut = Redactor((), ALL, max_bytes=4096).bounded(answer)
    assert cut["truncated"] is True and len(cut["text"]) <= 4096 + len(TRUNCATED)
    assert "ana.lim" not in cut["text"]


@given(st.lists(st.text(alphabet="ab1@.", max_size=8), min_size=1, max_size=20))
@settings(max_examples=200)
def test_a_redactor_that_has_seen_values_masks_them_as_a_fresh_one(values: list[str]) -> None:
    seasoned = Redactor((), ALL)
    for value in values:
        seasoned.text(value)
    assert [seasoned.text(v) for v in values] == [Redactor((), ALL).text(v) for v in values]


def test_the_clean_strings_a_redactor_remembers_are_bounded_and_never_hold_a_match() -> None:
    redactor = Redactor((), ALL)
    for n in range(CLEAN_STRINGS + 10):
        value = "value-" + "".join("abcdefghij"[int(d)] for d in str(n))
        assert redactor.text(value) == value
    assert redactor.text("ana@example.com") == redactor.text("ana@example.com") != "ana@example.com"
    assert redactor.text("x" * (CLEAN_CHARS + 1)) == "x" * (CLEAN_CHARS + 1)
    remembered = redactor._clean
    assert 0 < len(remembered) <= CLEAN_STRINGS
    assert "ana@example.com" not in remembered and "x" * (CLEAN_CHARS + 1) not in remembered


def test_large_integers_in_lists_and_objects_are_read_small_ones_kept() -> None:
    redactor = Redactor((), ALL)
    doc = {"n": 4111111111111111, "data": [7, 4111111111111111, True, None, 1.5], "k": [12]}
    assert redactor.document(doc) == {
        "n": "[REDACTED:card]",
        "data": [7, "[REDACTED:card]", True, None, 1.5],
        "k": [12],
    }


# Units whose every start let a detector try many ways to split a run of digits: work that
# grows linearly, but ~50 times the usual for each character (the phone pattern once took
# 141 ms over 64 KiB of "+" and 24 digits).
DIGIT_RUNS = ["+" + "1" * 24, "+12 " + "1" * 24, "+1 (12) " + "1" * 30, "+1." + "1" * 40]


@pytest.mark.parametrize("unit", DIGIT_RUNS)
def test_long_runs_of_digits_cost_what_other_digits_do(unit: str) -> None:
    redactor = Redactor((), ALL, max_bytes=1 << 20)
    size = 64 * 1024
    plain = _seconds(redactor, ("1234 5678 " * size)[:size], 3)
    runs = _seconds(redactor, (unit * size)[:size], 3)
    assert runs < 2 * plain, f"{runs / plain:.1f}x the time of plain digits"


class Walks(Redactor):
    """A redactor that counts the documents it walks."""

    walked = 0

    def document(self, doc: Any) -> Any:
        self.walked += 1
        return super().document(doc)


def test_an_answer_far_over_the_cut_is_cut_as_bytes_without_a_walk() -> None:
    # A guard's changed answer is kept as a document: a 16 MB one was walked whole.
    answer = {"outputs": [{"name": "t", "data": ["ana.lim@example.com " * 10] * 100}]}
    near, far = Walks((), ALL, max_bytes=10_000), Walks((), ALL, max_bytes=4096)
    assert near.bounded(answer)["truncated"] is True and near.walked == 1  # 20 KB: walked
    cut = far.bounded(answer)
    assert far.walked == 0 and cut["truncated"] is True
    assert "ana.lim" not in cut["text"] and "[REDACTED:email]" in cut["text"]


def test_keys_field_names_in_any_case_and_whole_floats_are_read() -> None:
    doc = {
        "ana.lim@example.com": 1,
        "Phone_Number": "9123 4567",
        "card": 4111111111111111.0,
        "ratio": 0.25,
        "big": 1.5e9,
        "inputs": [{"name": "SSN", "data": ["1"]}],
    }
    redacted = Redactor(("phone_number", "ssn"), ALL).document(doc)
    assert redacted == {
        "[REDACTED:email]": 1,
        "Phone_Number": "[REDACTED:Phone_Number]",
        "card": "[REDACTED:card]",
        "ratio": 0.25,
        "big": 1.5e9,  # a number that is no card, phone or id number is kept
        "inputs": [{"name": "SSN", "data": ["[REDACTED:SSN]"]}],
    }
    assert Redactor((), ALL).document([4111111111111111.0, 0.5]) == ["[REDACTED:card]", 0.5]


@pytest.mark.parametrize(
    "doc",
    [
        {"dataframe_split": {"columns": ["Email", "age"], "data": [["a", 41], ["b", 42]]}},
        {"data": {"names": ["email", "age"], "ndarray": [["a", 41], ["b", 42]]}},
        {
            "data": {
                "names": ["email", "age"],
                "tensor": {"shape": [2, 2], "values": [7, 41, 8, 42]},
            }
        },
    ],
)
def test_a_named_field_is_masked_in_a_table_whose_columns_are_named_apart(doc: Any) -> None:
    out = dumps(Redactor(("email",), ()).document(doc)).decode()
    assert out.count("[REDACTED:") == 2 and "41" in out and "42" in out
    assert '"a"' not in out and ",7," not in out


def test_a_single_row_table_and_unnamed_tables_are_read_as_they_are() -> None:
    redactor = Redactor(("email",), ())
    one = redactor.document({"columns": ["email", "n"], "data": ["a@b", 1]})
    assert one == {"columns": ["email", "n"], "data": ["[REDACTED:email]", 1]}
    plain = {"columns": ["age"], "data": [[41]], "names": 3}
    assert redactor.document(plain) == plain
