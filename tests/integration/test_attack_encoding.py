"""A compressed body reaches the model coherent (decoded, with matching headers) or not at all."""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path

import aiohttp

from guardproxy.testing import proxy_settings, running_proxy
from tests.integration.attacks import INFER, applicant, guarded, post

BODY = json.dumps(applicant(52, "Male")).encode()


async def test_a_gzip_body_is_forwarded_decoded_with_matching_headers(tmp_path: Path) -> None:
    async with guarded(tmp_path) as (proxy, model), aiohttp.ClientSession() as session:
        for encoding, encoded in (("gzip", gzip.compress(BODY)), ("deflate", zlib.compress(BODY))):
            headers = {"Content-Encoding": encoding}
            code, answer_headers, _ = await post(session, proxy.url + INFER, encoded, headers)
            assert code == 200 and answer_headers["X-Guard-Decision"] == "1"
            assert model.bodies[-1] == BODY  # exactly the decoded bytes
            seen = model.headers[-1]
            assert "Content-Encoding" not in seen and seen["Content-Length"] == str(len(BODY))
            assert seen["Accept-Encoding"] == "identity"  # guards must be able to read the answer


async def test_bombs_unknown_and_broken_encodings_are_refused_as_json(tmp_path: Path) -> None:
    bomb = gzip.compress(b" " * (64 << 20))  # 64 MiB of spaces in about 64 KiB
    cases = [
        (bomb, "gzip", 413),
        (BODY, "br", 415),
        (b"\x1f\x8b not really gzip", "gzip", 400),
        (gzip.compress(BODY)[:-10], "gzip", 400),
    ]
    async with guarded(tmp_path, max_body=1 << 20) as (proxy, model):
        async with aiohttp.ClientSession() as session:
            for data, encoding, expected in cases:
                headers = {"Content-Encoding": encoding, "X-Request-Id": f"enc-{expected}"}
                code, _, answer = await post(session, proxy.url + INFER, data, headers)
                assert code == expected and answer["request_id"] == f"enc-{expected}"
                assert isinstance(answer["error"], str)
        assert model.bodies == []  # the model never saw any of them
        assert proxy.runtime.proxy.counts.refused == {413: 1, 415: 1, 400: 2}


async def test_unguarded_paths_pass_compressed_bodies_through_untouched(
    upstream_url: str, tmp_path: Path
) -> None:
    encoded = gzip.compress(BODY)
    async with running_proxy(proxy_settings(upstream_url, samples_dir=tmp_path / "s")) as proxy:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
            async with session.post(proxy.url + "/echo", data=encoded, headers=headers) as r:
                echo = await r.json()
    # The echo server decodes gzip itself: it can only get BODY back from coherent bytes.
    assert echo["body_sha256"] == hashlib.sha256(BODY).hexdigest()
    assert ["Content-Encoding", "gzip"] in echo["headers"]
    assert ["Content-Length", str(len(encoded))] in echo["headers"]
