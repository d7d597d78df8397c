"""Request targets: the origin form sent upstream and the path routes are matched on."""

from __future__ import annotations

import pytest

from guardproxy.hotpath.targets import origin_form, route_path


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/v2/models/a/infer?x=1", b"/v2/models/a/infer?x=1"),
        (b"http://model:8080/v2/models/a/infer?x=1", b"/v2/models/a/infer?x=1"),
        (b"http://model:8080?x=1", b"/?x=1"),
        (b"http://model:8080", b"/"),
        (b"*", b"*"),
        (b"v2/models", b"/v2/models"),
    ],
)
def test_origin_form(target: bytes, expected: bytes) -> None:
    assert origin_form(target) == expected


def test_route_path_drops_the_query_and_decodes_escapes() -> None:
    assert route_path(b"/v2/models/adult/infer?a=%41") == "/v2/models/adult/infer"
    assert route_path(b"/v2/models/%61dult/infer") == "/v2/models/adult/infer"
    assert route_path(b"/caf\xc3\xa9") == "/caf\xc3\xa9"  # bytes as they came, one char each
