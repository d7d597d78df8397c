"""Route paths: normalised as an upstream reads them, ambiguous encodings found."""

from __future__ import annotations

import pytest

from guardproxy.hotpath.paths import origin_form, route_path
from guardproxy.policy.table import RouteMatcher

ROUTES = RouteMatcher(["/v2/models/*/infer", "/v2/models/*/versions/*/infer"])


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/v2/models/m/infer", "/v2/models/m/infer"),
        ("/v2/models/m/infer?x=1#f", "/v2/models/m/infer"),
        ("/v2//models///m/infer", "/v2/models/m/infer"),
        ("/v2/models/m/./infer", "/v2/models/m/infer"),
        ("/v2/models/x/../m/infer", "/v2/models/m/infer"),
        ("/../../v2/models/m/infer", "/v2/models/m/infer"),
        ("/v2/%6Dodels/m/%69nfer", "/v2/models/m/infer"),
        ("/v2/models/m/%2E/infer", "/v2/models/m/infer"),
        ("/v2/models/a%20b/infer", "/v2/models/a%20b/infer"),  # reserved: left encoded
        ("/v2/models/m/infer/.", "/v2/models/m/infer/"),
    ],
)
def test_paths_are_normalised_the_way_servers_read_them(raw: str, path: str) -> None:
    assert route_path(raw).path == path


@pytest.mark.parametrize(
    "raw",
    [
        "/v2/models/m/infer",
        "/v2/models/m/versions/3/infer",
        "/v2/models/m/infer/",
        "//v2/models/m/./infer",
        "/v2/models/m/%69nfer",
        "/v2/models/m%2Finfer",  # an encoded slash some upstreams decode
        "/v2/models%5Cm/infer",
    ],
)
def test_every_spelling_of_a_guarded_route_matches_a_reading(raw: str) -> None:
    assert any(ROUTES.matches(reading) for reading in route_path(raw).readings())


def test_encoded_separators_are_flagged_ambiguous() -> None:
    assert route_path("/v2/models/m%2finfer").ambiguous
    assert route_path("/v2/models/m%00/infer").ambiguous
    assert not route_path("/v2/models/m%41/infer").ambiguous
    assert route_path("/v2/models/m/infer/").key == "/v2/models/m/infer"


def test_plain_paths_cost_nothing_and_other_paths_stay_unguarded() -> None:
    assert route_path("/healthz").readings() == ("/healthz",)
    assert not any(ROUTES.matches(r) for r in route_path("/v2/models/m/ready").readings())


@pytest.mark.parametrize(
    ("target", "origin"),
    [
        ("/a/b?c=1", "/a/b?c=1"),
        ("http://evil.example/v2/models/m/infer?x", "/v2/models/m/infer?x"),
        ("http://evil.example?x=1", "/?x=1"),
        ("http://evil.example", "/"),
        ("*", "*"),  # asterisk-form (OPTIONS): about the server, not its /*
    ],
)
def test_absolute_form_targets_become_paths(target: str, origin: str) -> None:
    assert origin_form(target) == origin


@pytest.mark.parametrize(
    ("target", "origin"),
    [
        ("*", "*"),
        ("http://evil.example", "*"),  # RFC 9112 3.2.4: no path, no query: the last proxy's `*`
        ("http://evil.example:8080", "*"),
        ("http://evil.example/", "/"),
        ("http://evil.example?x=1", "/?x=1"),
        ("/a", "/a"),
    ],
)
def test_options_targets_without_a_path_become_the_asterisk(target: str, origin: str) -> None:
    assert origin_form(target, options=True) == origin
