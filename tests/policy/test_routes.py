"""Route globs: matching, the model that owns a path, overlaps between models, versions."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardproxy.policy.routes import (
    RouteMatcher,
    glob_to_regex,
    overlap,
    version_label,
)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/v2/models/*/infer", "/v2/models/adult/infer", True),
        ("/v2/models/*/infer", "/v2/models//infer", False),
        ("/v2/models/*/infer", "/v2/models/a/b/infer", False),
        ("/v2/models/*/infer", "/v2/models/adult/infer/x", False),
        ("/v2/models/*/versions/*/infer", "/v2/models/a/versions/3/infer", True),
        ("/v1/**", "/v1", True),
        ("/v1/**", "/v1/models/a:predict", True),
        ("/v1/**", "/v10", False),
        ("/a/**/b", "/a/b", True),
        ("/a/**/b", "/a/x/y/b", True),
        ("/a/**/b", "/a/x/y/c", False),
        ("/invocations", "/invocations", True),
        ("/x.json", "/xajson", False),
        ("/v1/models/*:predict", "/v1/models/mnist:predict", True),
    ],
)
def test_route_globs(pattern: str, path: str, expected: bool) -> None:
    assert RouteMatcher([pattern]).matches(path) is expected


def test_several_routes_and_none() -> None:
    matcher = RouteMatcher(["/invocations", "/v2/models/*/infer"])
    assert matcher.matches("/invocations") and matcher.matches("/v2/models/m/infer")
    assert not matcher.matches("/healthz")
    assert not RouteMatcher([]).matches("/anything")


def test_owner_names_the_model_whose_glob_matched() -> None:
    matcher = RouteMatcher(["/a/*", "/b/**", "/c"], owners=[0, 1, 1])
    assert [matcher.owner(p) for p in ("/a/x", "/b/y/z", "/c", "/d")] == [0, 1, 1, None]


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("/v2/models/credit/**", "/v2/models/*/infer", True),
        ("/v2/models/credit/infer", "/v2/models/fraud/infer", False),
        ("/v2/models/credit/infer", "/v2/models/credit/versions/*/infer", False),
        ("/v1/models/a:predict", "/v1/models/*:predict", True),
        ("/v1/models/a:predict", "/v1/models/b*:predict", False),
        ("/a/**/b", "/a/x/y/b", True),
        ("/a/**", "/a", True),
        ("/a", "/**/**/a", True),
        ("/invocations", "/invocations", True),
        ("/x*", "/*y", True),
    ],
)
def test_overlap_of_two_globs(first: str, second: str, expected: bool) -> None:
    assert overlap(first, second) is expected
    assert overlap(second, first) is expected


SEGMENTS = st.sampled_from(["a", "b", "ab", "*", "**", "a*", "*b"])
GLOBS = st.lists(SEGMENTS, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s))
PATHS = st.lists(st.sampled_from(["a", "b", "ab", "ba", "aab"]), min_size=1, max_size=5).map(
    lambda s: "/" + "/".join(s)
)


@settings(max_examples=300, deadline=None)
@given(GLOBS, GLOBS, st.lists(PATHS, max_size=30))
def test_globs_without_overlap_never_share_a_path(
    first: str, second: str, paths: list[str]
) -> None:
    a, b = re.compile(glob_to_regex(first)), re.compile(glob_to_regex(second))
    shared = [p for p in paths if a.fullmatch(p) and b.fullmatch(p)]
    if shared:
        assert overlap(first, second), shared


def test_version_label_keeps_plain_versions_and_digests_the_rest() -> None:
    assert version_label("2024-06.1") == "2024-06.1"
    assert version_label(None) == version_label("") == ""
    odd = version_label("v1 with spaces|and pipes")
    assert odd.startswith("~") and len(odd) == 13 and "|" not in odd
