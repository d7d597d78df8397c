"""The compiled policy table: route globs, region resolution, versions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from guardproxy.policy.loader import PolicyError, load_directory
from guardproxy.policy.models import ModelPolicy, Policy
from guardproxy.policy.table import (
    CACHED_PATH_CHARS,
    PATH_CACHE,
    CompiledModel,
    CompiledPolicy,
    PolicyTable,
    builtin_table,
    compile_policy,
    compile_table,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "policies"


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


def test_chain_factory_runs_once_per_model() -> None:
    seen: list[tuple[str, str]] = []

    def build(region: str, spec: ModelPolicy, version: str) -> object:
        seen.append((region, spec.name))
        return ("chain", region, spec.name)

    table = compile_table(load_directory(EXAMPLES), build_chain=build)
    assert ("id", "adult") in seen and len(seen) == len(set(seen))
    found = table.regions["id"].model("adult")
    assert found is not None and found.chain == ("chain", "id", "adult")


def test_paths_resolve_to_their_model_or_to_none() -> None:
    policy = Policy.model_validate(
        {
            "region": "sg",
            "models": [
                {"name": "credit", "routes": ["/v2/models/credit/**"]},
                {"name": "fraud"},
                {"name": "churn", "protocol": "tfserving"},
            ],
        }
    )
    entry = compile_table_of(policy)
    names = {
        path: getattr(entry.match(path), "name", None)
        for path in (
            "/v2/models/credit/infer",
            "/v2/models/credit/versions/7/infer",
            "/v2/models/fraud/versions/2/infer",
            "/v2/models/fraud/ready",
            "/v1/models/churn:predict",
            "/v2/models/other/infer",
        )
    }
    assert names == {
        "/v2/models/credit/infer": "credit",
        "/v2/models/credit/versions/7/infer": "credit",
        "/v2/models/fraud/versions/2/infer": "fraud",
        "/v2/models/fraud/ready": None,
        "/v1/models/churn:predict": "churn",
        "/v2/models/other/infer": None,
    }
    assert entry.match("/v2/models/credit/infer") is entry.model("credit")  # cached


def test_the_path_cache_is_bounded() -> None:
    entry = compile_table_of(Policy.model_validate({"region": "sg", "models": [{"name": "m"}]}))
    for i in range(PATH_CACHE + 100):
        entry.match(f"/junk/{i}")
    assert len(entry._by_path) == PATH_CACHE
    assert entry.match("/v2/models/m/infer") is entry.model("m")


def test_the_path_cache_drops_the_least_recently_used_path() -> None:
    # Kept until full and never dropped, a client's junk paths pinned the cache for good.
    entry = compile_table_of(Policy.model_validate({"region": "sg", "models": [{"name": "m"}]}))
    for i in range(PATH_CACHE):
        entry.match(f"/junk/{i}")
    hot = "/v2/models/m/infer"
    assert entry.match(hot) is entry.model("m") and hot in entry._by_path
    assert "/junk/0" not in entry._by_path and len(entry._by_path) == PATH_CACHE
    for i in range(2 * PATH_CACHE):
        entry.match(f"/more/{i}")
        if i % 1000 == 0:
            entry.match(hot)  # in use: kept while junk comes and goes
    assert hot in entry._by_path and len(entry._by_path) == PATH_CACHE


class CountedModels(tuple):  # type: ignore[type-arg]
    """A tuple of models that counts how often it is walked."""

    walks = 0

    def __iter__(self) -> Iterator[CompiledModel]:
        type(self).walks += 1
        return super().__iter__()


def test_a_model_by_name_is_one_lookup_however_many_models() -> None:
    # The monitors and every gauge series ask per model: a walk each was quadratic.
    specs = [{"name": f"m{i}"} for i in range(1000)]
    compiled = compile_table_of(Policy.model_validate({"region": "sg", "models": specs}))
    models = CountedModels(compiled.models)
    entry = CompiledPolicy(
        compiled.region, compiled.version, compiled.policy, (), models, compiled.routes
    )
    CountedModels.walks = 0
    found = [entry.model(f"m{i}") for i in range(1000)]
    assert [m.name for m in found if m is not None] == [f"m{i}" for i in range(1000)]
    assert entry.model("nobody") is None and CountedModels.walks == 0


def test_long_paths_are_matched_not_kept() -> None:
    # Kept, 4,096 paths of 60 KB would hold 240 MB.
    entry = compile_table_of(Policy.model_validate({"region": "sg", "models": [{"name": "m"}]}))
    long = "/junk/" + "x" * CACHED_PATH_CHARS
    assert entry.match(long) is None and entry.match(long[:CACHED_PATH_CHARS]) is None
    assert list(entry._by_path) == [long[:CACHED_PATH_CHARS]]


def compile_table_of(policy: Policy) -> CompiledPolicy:
    return compile_policy(policy)


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
    model = entry.match("/v2/models/adult/infer")
    assert model is not None and model.name == "adult"
    spec = model.spec
    assert spec.groups.values == ("Female", "Male")
    assert spec.groups.attribute is not None and spec.groups.attribute.input == "sex"
    assert spec.score.output == "score" and spec.decision.threshold == 0.5
    assert spec.sampling.rate == 0.05 and spec.sampling.min_per_group > 0
    assert spec.drift is not None and spec.fairness is not None
    assert entry.sources == ("<builtin>/default.yaml",)


def test_compile_without_default_is_a_policy_error() -> None:
    loaded = load_directory(EXAMPLES)
    partial = type(loaded)(loaded.directory, {"sg": loaded.policies["sg"]}, {}, "")
    with pytest.raises(PolicyError, match="no default policy"):
        compile_table(partial)
