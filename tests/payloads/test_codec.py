"""Repeated JSON keys found as parsers that keep the first and the last would disagree."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from guardproxy.payloads import codec
from guardproxy.payloads.binary import decode_request, decode_response
from guardproxy.payloads.codec import loads, repeats_a_key
from guardproxy.payloads.errors import RepeatedKey

AGE = b'{"name":"age","shape":[1],"datatype":"INT32","data":[40]}'
SEX = b'{"name":"sex","shape":[1],"datatype":"BYTES","data":["Male"]}'


def repeated(data: bytes) -> bool:
    """What a parser that sees every member says: does an object repeat a key?"""
    found = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({k for k, _ in items}) != len(items)
        return dict(items)

    json.loads(data, object_pairs_hook=pairs)
    return found


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs":[{"name":"sex","shape":[1],"datatype":"BYTES","data":["Male"],'
        b'"data":["Female"]},' + AGE + b"]}",
        b'{"inputs":[' + SEX + b'],"inputs":[' + AGE + b"]}",
        b'{"inputs":[{"name":"sex","name":"race","data":["Male"]},'
        b'{"name":"race","name":"sex","data":["Female"]}]}',
        b'{"inputs":[{"d\\u0061ta":["Female"],"data":["Male"]}]}',  # the same key, escaped
        b'{"a":1,"a":"\\u003a"}',  # the colon it lost, written as an escape
        b'{"note":"x:y","a":1,"a":2}',  # a string holding a colon
        b'{"a":"{\\"b\\":1,","a":2}',  # a value that looks like members
        b'[1,[2,[{"a":1,"a":2}]]]',
        b'{"":1,"":2}',
        b'{"a":' * 600 + b'{"b":1,"b":2}' + b"}" * 600,  # deeper than orjson writes
    ],
)
def test_a_key_named_twice_in_one_object_is_found(body: bytes) -> None:
    assert repeated(body)
    assert repeats_a_key(body, loads(body))


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs":[' + SEX + b"," + AGE + b"]}",
        b'{"inputs":[' + SEX + b"," + SEX + b"]}",  # the same key in two objects
        b'{"data":["\\"data\\":1", "a:b", "{", "\\u003a"],"a":"\\\\"}',
        b'"a:b"',
        b"[]",
        b'{"a":' * 600 + b"1" + b"}" * 600,
    ],
)
def test_keys_named_once_in_each_object_are_not(body: bytes) -> None:
    assert not repeated(body)
    assert not repeats_a_key(body, loads(body))


def document(rng: random.Random, depth: int) -> str:
    """Random JSON whose keys and strings hold colons, braces, quotes and escapes."""
    keys = ["a", "b", "d\\u0061ta", "data", "x:y", "{", '\\"', ":", "\\u003a", "k\\\\"]
    roll = rng.random()
    if depth > 4 or roll < 0.3:
        return rng.choice(["1", '"s"', '"a:b"', '"{"', '"\\":"', "null", '"\\u003A"', "2.5"])
    if roll < 0.6:
        return "[" + ",".join(document(rng, depth + 1) for _ in range(rng.randint(0, 4))) + "]"
    members = (f'"{rng.choice(keys)}":{document(rng, depth + 1)}' for _ in range(rng.randint(0, 4)))
    return "{" + ",".join(members) + "}"


@pytest.mark.parametrize("small", [codec._SMALL, 0])  # written again, or its keys counted
def test_every_way_of_counting_agrees_with_a_parser_that_sees_every_member(
    small: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codec, "_SMALL", small)
    rng = random.Random(7)
    for _ in range(3000):
        body = document(rng, 0).encode()
        assert repeats_a_key(body, loads(body)) == repeated(body), body


def test_lists_are_read_only_until_every_object_is_found() -> None:
    # The usual body's objects are all found before its data lists: those are never read.
    doc = {"parameters": {"at": "12:00"}, "inputs": [{"name": "x", "data": [{"q": 1}]}]}
    assert codec._keys(doc, 3) == 5  # the object inside `data` not counted: the list unread
    assert codec._keys(doc, 4) == 6


def test_a_binary_request_header_that_repeats_a_key_is_refused() -> None:
    header = b'{"inputs":[' + SEX + b'],"inputs":[' + AGE + b"]}"
    with pytest.raises(RepeatedKey, match="names a key more than once"):
        decode_request(header, str(len(header)))
    answer = b'{"outputs":[],"outputs":[]}'  # an answer is the model's own: read as before
    assert decode_response(answer, str(len(answer))).doc == {"outputs": []}
