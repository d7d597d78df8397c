"""Content-Encoding: decoded exactly, capped, or refused with the right status."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest

from guardproxy.hotpath import encoding
from guardproxy.hotpath.encoding import EncodingError, codings, decode_body

# The real one: a test swaps zlib.decompressobj for a wrapper that calls this.
INFLATER = zlib.decompressobj
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


class CountingInflater:
    """A zlib inflater that adds up the bytes handed to it."""

    fed = 0

    def __init__(self, wbits: int) -> None:
        self._inner = INFLATER(wbits)

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        """Counts the input, then inflates it."""
        CountingInflater.fed += len(data)
        return self._inner.decompress(data, max_length)

    @property
    def eof(self) -> bool:
        """Whether the stream's end marker was read."""
        return self._inner.eof

    @property
    def unused_data(self) -> bytes:
        """The input after the end marker."""
        return self._inner.unused_data


def test_members_spanning_and_ending_on_chunk_boundaries_decode_exactly() -> None:
    payloads = [os.urandom(n) for n in (40_000, 1, 0, 70_000, 16 << 10)]
    encoded = b"".join(gzip.compress(p) for p in payloads)
    assert decode_body(encoded, ["gzip"], 1 << 20) == b"".join(payloads)
    big = os.urandom(100_000)
    assert decode_body(deflate_raw(big), ["deflate"], 1 << 20) == big


def test_gzip_members_up_to_the_cap_pass_and_one_more_is_refused_400() -> None:
    member = gzip.compress(b"ab", mtime=0)
    cap = encoding.MAX_GZIP_MEMBERS
    assert decode_body(member * cap, ["gzip"], 1 << 20) == b"ab" * cap
    with pytest.raises(EncodingError) as caught:
        decode_body(member * (cap + 1), ["gzip"], 1 << 20)
    assert caught.value.status == 400
    assert f"more than {cap} gzip members" in caught.value.message


def test_a_body_of_many_tiny_members_is_refused_400() -> None:
    with pytest.raises(EncodingError) as caught:
        decode_body(gzip.compress(b"", mtime=0) * 50_000, ["gzip"], 1 << 20)
    assert caught.value.status == 400


def test_each_member_does_not_copy_the_rest_of_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding.zlib, "decompressobj", CountingInflater)
    monkeypatch.setattr(CountingInflater, "fed", 0)
    members = [gzip.compress(os.urandom(32 << 10)) for _ in range(32)]
    body = b"".join(members)
    size = len(body)
    assert len(decode_body(body, ["gzip"], 2 << 20)) == 32 << 15
    # Re-feeding the remainder per member would hand zlib ~16 bodies' worth.
    assert CountingInflater.fed < 2 * size


def test_codings_up_to_the_cap_pass() -> None:
    encoded = BODY
    for _ in range(encoding.MAX_CODINGS):
        encoded = gzip.compress(encoded)
    assert decode_body(encoded, ["gzip"] * encoding.MAX_CODINGS, 1 << 20) == BODY


def test_too_many_codings_are_refused_415_before_any_inflate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_inflate(wbits: int) -> None:
        raise AssertionError("inflated a body whose codings are over the cap")

    monkeypatch.setattr(encoding.zlib, "decompressobj", no_inflate)
    applied = codings(["gzip, " * 13_000])
    with pytest.raises(EncodingError) as caught:
        decode_body(gzip.compress(BODY), applied, 1 << 20)
    assert caught.value.status == 415
    assert f"at most {encoding.MAX_CODINGS}" in caught.value.message
