"""The compiled policy table: route globs, region resolution, versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardproxy.policy.loader import PolicyError, load_directory
from guardproxy.policy.models import Policy
from guardproxy.policy.table import (
    PolicyTable,
    RouteMatcher,
    builtin_table,
    compile_table,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "policies"


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


def test_resolution_by_name_case_and_fallback() -> None:
    table = compile_table(load_directory(EXAMPLES))
    assert table.default_region == "default"
    assert table.resolve("sg") == (table.regions["sg"], True)
    assert table.resolve("SG") == (table.regions["sg"], True)
    assert table.resolve("mars") == (table.regions["default"], False)
    assert table.resolve(None) == (table.regions["default"], True)


def test_pod_region_becomes_the_default_when_present() -> None:
    loaded = load_directory(EXAMPLES)
    assert compile_table(loaded, default_region="th").resolve("mars")[0].region == "th"
    assert compile_table(loaded, default_region="mars").default_region == "default"


def test_table_needs_its_default_region() -> None:
    with pytest.raises(ValueError, match="not in the table"):
        PolicyTable({}, "default")


def test_chain_factory_runs_once_per_region() -> None:
    seen: list[str] = []

    def build(policy: Policy) -> object:
        seen.append(policy.region)
        return ("chain", policy.region)

    table = compile_table(load_directory(EXAMPLES), build_chain=build)
    assert sorted(seen) == ["default", "id", "sg", "th"]
    assert table.regions["id"].chain == ("chain", "id")


def test_version_is_stable_and_tracks_content(tmp_path: Path) -> None:
    for name in ("default.yaml", "sg.yaml"):
        (tmp_path / name).write_text((EXAMPLES / name).read_text())
    first = compile_table(load_directory(tmp_path))
    again = compile_table(load_directory(tmp_path))
    assert first.regions["sg"].version == again.regions["sg"].version
    assert len(first.regions["sg"].version) == 12
    assert first.regions["sg"].version != first.regions["default"].version
    # Only a comment changes: same merged policy, same version.
    (tmp_path / "sg.yaml").write_text("# reviewed\n" + (EXAMPLES / "sg.yaml").read_text())
    assert (
        compile_table(load_directory(tmp_path)).regions["sg"].version == first.regions["sg"].version
    )
    # The parent changes: every child's version changes too.
    default = (EXAMPLES / "default.yaml").read_text().replace("threshold: 0.5", "threshold: 0.55")
    (tmp_path / "default.yaml").write_text(default)
    changed = compile_table(load_directory(tmp_path))
    assert changed.regions["sg"].version != first.regions["sg"].version


def test_compiled_entry_is_frozen() -> None:
    entry = builtin_table().default
    with pytest.raises(AttributeError):
        entry.version = "x"  # type: ignore[misc]


def test_builtin_table_is_the_adult_demo() -> None:
    table = builtin_table(default_region="sg")
    entry, known = table.resolve("default")
    assert known and table.default_region == "default"
    policy = entry.policy
    assert policy.groups.values == ("Female", "Male")
    assert policy.groups.attribute is not None and policy.groups.attribute.input == "sex"
    assert policy.model.score.output == "score" and policy.decision.threshold == 0.5
    assert policy.sampling.rate == 0.05 and policy.sampling.min_per_group > 0
    assert policy.drift is not None and policy.fairness is not None
    assert entry.routes.matches("/v2/models/adult/infer")
    assert entry.sources == ("<builtin>/default.yaml",)


def test_compile_without_default_is_a_policy_error() -> None:
    loaded = load_directory(EXAMPLES)
    partial = type(loaded)(loaded.directory, {"sg": loaded.policies["sg"]}, {}, "")
    with pytest.raises(PolicyError, match="no default policy"):
        compile_table(partial)
