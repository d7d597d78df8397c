"""Route globs: matching, the model that owns a path, overlaps between models, versions."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardproxy.policy import routes
from guardproxy.policy.loader import PolicyError, PolicyFiles, load_files
from guardproxy.policy.routes import (
    RouteMatcher,
    glob_to_regex,
    literal_prefix,
    overlap,
    overlapping_pairs,
    version_label,
)

MATCH_SEGMENTS = st.sampled_from(["a", "b", "ab", "", "*", "**", "a*", "*b", "a**b"])
GLOBS_FOR_MATCHING = st.lists(MATCH_SEGMENTS, min_size=1, max_size=4).map(
    lambda s: "/" + "/".join(s)
)
PATHS_FOR_MATCHING = st.lists(
    st.sampled_from(["a", "b", "ab", "ba", "aab", ""]), min_size=1, max_size=5
).map(lambda s: "/" + "/".join(s))


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


@settings(max_examples=300, deadline=None)
@given(
    st.lists(GLOBS_FOR_MATCHING, min_size=1, max_size=6),
    st.lists(PATHS_FOR_MATCHING, max_size=20),
)
def test_the_owner_is_the_first_glob_that_matches_the_whole_path(
    globs: list[str], paths: list[str]
) -> None:
    # What one regex alternation of every glob, tried in order, answered.
    matcher = RouteMatcher(globs, owners=range(len(globs)))
    compiled = [re.compile(glob_to_regex(g)) for g in globs]
    for path in paths:
        first = next((i for i, regex in enumerate(compiled) if regex.fullmatch(path)), None)
        assert matcher.owner(path) == first, path


def test_a_path_is_matched_only_against_the_globs_filed_along_its_segments() -> None:
    # One alternation of 2,000 globs took 2-4 ms a path; the trie tries at most one here.
    patterns = [
        route
        for i in range(1000)
        for route in (f"/v2/models/m{i}/infer", f"/v2/models/m{i}/versions/*/infer")
    ]
    matcher = RouteMatcher(patterns, owners=[i // 2 for i in range(len(patterns))])
    assert matcher.owner("/v2/models/m999/infer") == 999
    assert matcher.owner("/v2/models/m999/versions/" + "7" * 300 + "/infer") == 999
    for path in (
        "/v2/models/m999/infer",
        "/v2/models/m999/versions/7/infer",
        "/v2/models/zzz/infer",
        "/x" * 1000,
    ):
        assert len(matcher.candidates(path)) <= 1


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


@settings(max_examples=300, deadline=None)
@given(st.lists(GLOBS, min_size=2, max_size=6), st.lists(PATHS, max_size=30))
def test_overlapping_pairs_holds_every_pair_that_shares_a_path(
    globs: list[str], paths: list[str]
) -> None:
    owners = list(range(len(globs)))
    found = set(overlapping_pairs(globs, owners))
    assert all(i < j and overlap(globs[i], globs[j]) for i, j in found)
    compiled = [re.compile(glob_to_regex(g)) for g in globs]
    for path in paths:
        matching = [i for i, regex in enumerate(compiled) if regex.fullmatch(path)]
        assert {(i, j) for i in matching for j in matching if i < j} <= found, path


def test_overlapping_pairs_skips_globs_of_one_owner() -> None:
    assert sorted(overlapping_pairs(["/a/*", "/a/b", "/a/**"], [0, 0, 1])) == [(0, 2), (1, 2)]


def test_literal_prefix_stops_at_the_first_wildcard() -> None:
    assert literal_prefix("/v2/models/m/versions/*/infer") == ("", "v2", "models", "m", "versions")
    assert literal_prefix("/v2/models/m/infer") == ("", "v2", "models", "m", "infer")
    assert literal_prefix("/a*/b") == ("",)


def many_models(n: int, extra: str = "") -> PolicyFiles:
    lines = "".join(f"  - {{name: model-{i:05d}}}\n" for i in range(n))
    text = f"region: default\nmodels:\n{lines}{extra}"
    digest = hashlib.sha256(text.encode()).hexdigest()
    return PolicyFiles("<many>", {"default.yaml": text.encode()}, (), digest)


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls = [0]
    original: Callable[..., object] = getattr(routes, name)

    def counted(*args: object) -> object:
        calls[0] += 1
        return original(*args)

    monkeypatch.setattr(routes, name, counted)
    return calls


def test_many_models_are_checked_for_overlaps_in_near_linear_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Compared pairwise, with every pair's states cached, 1,000 models took 79 s and 1.45 GB.
    calls = counting(monkeypatch, "tokens")
    extra = "  - {name: custom, protocol: jsonpath, routes: [/v2/models/*/ready]}\n"
    loaded = load_files(many_models(200, extra))
    assert len(loaded.policies["default"].models) == 201
    assert calls[0] <= 4 * 401  # linear: the old pairwise check tokenised 160,000 times


def test_overlapping_models_are_reported_once_a_pair_at_their_first_routes() -> None:
    extra = (
        "  - {name: wide, protocol: jsonpath, routes: [/v9/x, /v2/models/model-00001/**]}\n"
        "  - {name: wider, protocol: jsonpath, routes: ['/v2/**']}\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_files(many_models(2, extra))
    messages = [p.message.split(" overlap;")[0] for p in caught.value.problems]
    assert sorted(messages) == sorted(
        [
            "routes of models 'model-00000' (/v2/models/model-00000/infer) and 'wider' (/v2/**)",
            "routes of models 'model-00001' (/v2/models/model-00001/infer) and 'wide' "
            "(/v2/models/model-00001/**)",
            "routes of models 'model-00001' (/v2/models/model-00001/infer) and 'wider' (/v2/**)",
            "routes of models 'wide' (/v2/models/model-00001/**) and 'wider' (/v2/**)",
        ]
    )


def test_version_label_keeps_plain_versions_and_digests_the_rest() -> None:
    assert version_label("2024-06.1") == "2024-06.1"
    assert version_label(None) == version_label("") == ""
    odd = version_label("v1 with spaces|and pipes")
    assert odd.startswith("~") and len(odd) == 13 and "|" not in odd
