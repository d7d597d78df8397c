"""Content-Encoding: decoded exactly, capped, or refused with the right status."""

from __future__ import annotations

import gzip
import zlib

import pytest

from guardproxy.hotpath.encoding import EncodingError, codings, decode_body

BODY = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [7]}]}'


def deflate_raw(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


def test_codings_are_read_in_order_without_identity() -> None:
    assert codings(["gzip, identity", "Deflate"]) == ["gzip", "deflate"]
    assert codings(["identity", ""]) == []


@pytest.mark.parametrize(
    ("encoded", "applied"),
    [
        (gzip.compress(BODY), ["gzip"]),
        (gzip.compress(BODY[:20]) + gzip.compress(BODY[20:]), ["gzip"]),  # two members
        (zlib.compress(BODY), ["deflate"]),
        (deflate_raw(BODY), ["deflate"]),  # without the zlib header, as some clients send it
        (gzip.compress(zlib.compress(BODY)), ["deflate", "gzip"]),
        (BODY, []),
    ],
)
def test_decoded_bytes_are_exactly_the_original(encoded: bytes, applied: list[str]) -> None:
    assert decode_body(encoded, applied, 1 << 20) == BODY


def test_a_bomb_is_refused_413_without_inflating_it_all() -> None:
    bomb = gzip.compress(b"\0" * (50 << 20))
    with pytest.raises(EncodingError) as caught:
        decode_body(bomb, ["gzip"], 1 << 20)
    assert caught.value.status == 413


def test_exactly_the_limit_passes() -> None:
    assert len(decode_body(gzip.compress(b"a" * 1000), ["gzip"], 1000)) == 1000


@pytest.mark.parametrize(
    ("encoded", "applied", "status"),
    [
        (BODY, ["br"], 415),
        (BODY, ["gzip", "zstd"], 415),
        (b"not gzip at all", ["gzip"], 400),
        (gzip.compress(BODY)[:-12], ["gzip"], 400),  # cut before its end
        (zlib.compress(BODY) + b"junk", ["deflate"], 400),
    ],
)
def test_unknown_or_mismatched_encodings_are_refused(
    encoded: bytes, applied: list[str], status: int
) -> None:
    with pytest.raises(EncodingError) as caught:
        decode_body(encoded, applied, 1 << 20)
    assert caught.value.status == status
