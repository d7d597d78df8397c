"""Loading a policy directory: YAML positions, env substitution, extends, all problems."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardproxy.cli import chain_problems
from guardproxy.policy.loader import (
    PolicyError,
    PolicyFiles,
    Problem,
    format_problems,
    load_directory,
    load_files,
    validate_directory,
)
from guardproxy.policy.merge import deep_merge

from .kubelet import atomic_write

EXAMPLES = Path(__file__).resolve().parents[2] / "policies"

DEFAULT = """\
region: default
groups:
  attribute: {input: sex}
  values: [Female, Male]
decision:
  threshold: 0.5
  per_group:
    Female: 0.45
sampling:
  rate: 0.05
  redact: [email, phone]
models:
  - name: adult
"""


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def problems_of(directory: Path) -> list[str]:
    return [str(p).removeprefix(f"{directory}/") for p in validate_directory(directory)]


def test_every_example_policy_is_valid() -> None:
    loaded = load_directory(EXAMPLES)
    assert set(loaded.policies) == {"default", "sg", "id", "th"}
    assert loaded.sources["sg"] == (str(EXAMPLES / "default.yaml"), str(EXAMPLES / "sg.yaml"))


README = EXAMPLES.parent / "README.md"
# What the README example's comments offer in place of a line: (the line's text, what may
# stand there instead, the word of the comment that offers it).
ALTERNATIVES = [
    ("unguarded: {action: pass}", "unguarded: {action: refuse, allow: [/health]}", "refuse"),
    ("attribute: {input: sex}", 'attribute: {jsonpath: "$.parameters.group"}', "jsonpath"),
    ("attribute: {input: sex}", "attribute: {header: X-Group, trusted: true}", "X-Group"),
    ("telemetry: label", "telemetry: hashed", "hashed"),
    ("telemetry: label", "telemetry: none", "none"),
    ("annotate: headers", "annotate: body", "body"),
    ("annotate: headers", "annotate: rewrite", "rewrite"),
    ("on_error: fail_open", "on_error: fail_closed", "fail_closed"),
    (
        'subject: {jsonpath: "$.parameters.applicant_id"}',
        "subject: {header: X-Subject-Id, trusted: true}",
        "X-Subject-Id",
    ),
    ("action: suppress, output", "action: block, output", "block"),
    ("action: suppress, output", "action: flag, output", "flag"),
    (
        'open: {action: fallback, upstream: "http://127.0.0.1:8082"}',
        "open: {action: reject}",
        "reject",
    ),
    ('open: {action: fallback, upstream: "http://127.0.0.1:8082"}', "open: {action: flag}", "flag"),
    *[
        ("protocol: kserve_v2 ", f"protocol: {name} ", name)
        for name in ("tfserving", "mlflow", "seldon_v1", "openai")
    ],
    (  # a jsonpath model names its routes and where its score is (README, Policies)
        "protocol: kserve_v2 ",
        'protocol: jsonpath\n    routes: [/credit]\n    score: {path: "$.score"}\n    #',
        "jsonpath",
    ),
]
JSONPATH_SCORE = "    score: {output: predict_proba, index: 1}"


def readme_policies() -> list[str]:
    """Every YAML block of the README: each is a policy file."""
    text = README.read_text(encoding="utf-8")
    return re.findall(r"^```yaml\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def validate_region(directory: Path, policy: str) -> list[str]:
    """Problems of a region file beside the example default, as `guardproxy validate` has them."""
    region = yaml.safe_load(policy)["region"]
    default = (EXAMPLES / "default.yaml").read_text()
    write(directory, {"default.yaml": default, f"{region}.yaml": policy})
    return [str(p) for p in validate_directory(directory) or chain_problems(directory)]


def test_every_readme_policy_example_is_valid(tmp_path: Path) -> None:
    examples = readme_policies()
    assert examples, "the README shows a policy"
    for example in examples:
        assert validate_region(tmp_path, example) == [], example
    sg = load_directory(tmp_path).policies["sg"]
    assert [m.name for m in sg.models] == ["adult", "credit", "fraud"]


@pytest.mark.parametrize(("line", "instead", "offered"), ALTERNATIVES)
def test_what_the_readme_example_offers_in_a_comment_is_valid_there(
    tmp_path: Path, line: str, instead: str, offered: str
) -> None:
    example = readme_policies()[0]
    at = example.index(line)
    assert offered in example[at : example.index("\n", at)], "the comment names it"
    changed = example.replace(line, instead, 1)
    if instead.startswith("protocol: jsonpath"):  # its score is a path, not an output
        changed = changed.replace(JSONPATH_SCORE, "   ", 1)
    assert validate_region(tmp_path, changed) == []


def test_example_regions_differ_where_documented() -> None:
    policies = load_directory(EXAMPLES).policies
    assert policies["sg"].decision.per_group == {"Female": 0.45}
    assert policies["id"].sampling.rate > policies["default"].sampling.rate
    assert "monarchy" in policies["th"].labels.deny
    assert policies["th"].drift is not None and policies["th"].drift.window == 500
    assert policies["sg"].drift == policies["default"].drift


BROKEN = [
    ("bad yaml", "region: sg\nsampling: {rate: 0.1\nextends: default\n", "sg.yaml:3:8", "YAML"),
    ("tab", "region: sg\n\tx: 1\n", "sg.yaml:2:1", "cannot start any token"),
    ("wrong type", "region: sg\nsampling:\n  rate: lots\n", "sg.yaml:3:3", "valid number"),
    ("unknown key", "region: sg\ndecision:\n  treshold: 0.4\n", "sg.yaml:3:3", "unknown key"),
    ("out of range", "region: sg\n\nsampling: {rate: 1.5}\n", "sg.yaml:3:12", "less than or"),
    ("bad duration", "region: sg\nbreaker:\n  cooldown: 5 days\n", "sg.yaml:3:3", "not a duration"),
    (
        "undeclared group",
        "region: sg\nextends: default\ndecision:\n  per_group:\n    Other: 0.3\n",
        "sg.yaml:5:5",
        "undeclared group 'Other'",
    ),
    (
        "fallback",
        "region: sg\nbreaker:\n  open:\n    action: fallback\n",
        "sg.yaml:4:5",
        "needs open.upstream",
    ),
    (
        "drift rule",
        "region: sg\nextends: default\nbreaker:\n  trip:\n  - {when: drift.score.psi, above: 1}\n",
        "sg.yaml:5:6",
        "needs a drift section",
    ),
    ("self cycle", "region: sg\nextends: sg\n", "sg.yaml:2:1", "extends cycle sg -> sg"),
    ("missing parent", "region: sg\nextends: nope\n", "sg.yaml:2:1", "unknown region 'nope'"),
    ("env", "region: sg\nsampling:\n  rate: ${GP_UNSET_X}\n", "sg.yaml:3:9", "GP_UNSET_X"),
    ("region", "# sg\nregion: th\n", "sg.yaml:2:1", "expected region: sg"),
    ("no region", "extends: default\n", "sg.yaml:1:1", "missing region"),
    ("duplicate", "region: sg\nregion: sg\n", "sg.yaml:2:1", "duplicate key 'region'"),
    ("bool key", "region: sg\nyes: 1\n", "sg.yaml:2:1", "key 'yes' is a bool"),
    ("list", "- region\n", "sg.yaml:1:1", "top level is a list"),
    ("empty", "", "sg.yaml:1:1", "empty file"),
    ("two docs", "region: sg\n---\nregion: sg\n", "sg.yaml:2:1", "another document"),
    ("alias loop", "region: sg\nx: &a [*a]\n", "sg.yaml:2:4", "recursive alias"),
    ("python tag", "region: sg\nx: !!python/name:os.system ''\n", "sg.yaml:2:4", "cannot read"),
]


@pytest.mark.parametrize(
    ("text", "where", "fragment"), [case[1:] for case in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_broken_policy_is_reported_at_its_line(
    tmp_path: Path, text: str, where: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GP_UNSET_X", raising=False)
    write(tmp_path, {"default.yaml": DEFAULT, "sg.yaml": text})
    found = problems_of(tmp_path)
    assert any(p.startswith(where + ":") and fragment in p for p in found), found


def test_cycle_is_reported_in_every_member(tmp_path: Path) -> None:
    write(tmp_path, {"default.yaml": DEFAULT, "sg.yaml": "region: sg\nextends: id\n"})
    write(
        tmp_path, {"id.yaml": "region: id\nextends: sg\n", "th.yaml": "region: th\nextends: sg\n"}
    )
    found = problems_of(tmp_path)
    assert found == [
        "id.yaml:2:1: extends cycle id -> sg -> id (expected a chain that ends)",
        "sg.yaml:2:1: extends cycle sg -> id -> sg (expected a chain that ends)",
    ]


def test_all_problems_are_reported_at_once_across_files(tmp_path: Path) -> None:
    write(tmp_path, {"default.yaml": DEFAULT})
    write(tmp_path, {"sg.yaml": "region: sg\nsampling: {rat: 1}\n", "th.yaml": "region: th\n["})
    write(tmp_path, {"id.yaml": "region: id\ndecision: {threshold: x, annotate: nope}\n"})
    with pytest.raises(PolicyError) as caught:
        load_directory(tmp_path)
    files = [Path(p.file).name for p in caught.value.problems]
    assert files == ["id.yaml", "id.yaml", "sg.yaml", "th.yaml"]
    assert str(caught.value).count("\n") == 3


def test_inherited_value_is_reported_in_the_parent_file(tmp_path: Path) -> None:
    override = "region: sg\nextends: default\ngroups:\n  values: [F, M]\n"
    write(tmp_path, {"default.yaml": DEFAULT, "sg.yaml": override})
    assert problems_of(tmp_path) == [
        "default.yaml:8:5: model 'adult': decision.per_group names undeclared group 'Female'"
    ]


def test_a_wrong_key_in_a_region_default_is_reported_once_not_per_model(tmp_path: Path) -> None:
    region = """\
        region: default
        sampling:
          rat: 0.1
        models:
          - {name: a, protocol: kserve_v2}
          - {name: b, protocol: kserve_v2, sampling: {rte: 0.2}}
        """
    write(tmp_path, {"default.yaml": region})
    found = problems_of(tmp_path)
    assert len(found) == 2, found
    assert found[0].startswith("default.yaml:3:3: sampling.rat: unknown key")
    assert found[1].startswith("default.yaml:6:47: model 'b': sampling.rte: unknown key")


def test_missing_default_and_directory_are_problems(tmp_path: Path) -> None:
    write(tmp_path, {"sg.yaml": "region: sg\n"})
    assert problems_of(tmp_path) == ["default.yaml: no default policy (expected default.yaml)"]
    assert "cannot read directory" in problems_of(tmp_path / "absent")[0]


def test_same_region_twice_is_a_problem(tmp_path: Path) -> None:
    write(tmp_path, {"default.yaml": DEFAULT, "sg.yaml": "region: sg\n", "SG.yml": "region: SG\n"})
    assert problems_of(tmp_path) == ["sg.yaml: region 'sg' is defined twice"]


def test_env_substitution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GP_RATE", "0.2")
    monkeypatch.setenv("GP_EMPTY", "")
    monkeypatch.delenv("GP_SINK", raising=False)
    text = """\
        region: sg
        description: "cost $${NOT_A_VAR} in ${GP_EMPTY:-sgd}"
        sampling:
          rate: ${GP_RATE}
          sink: {jsonl: "${GP_SINK:-/tmp/samples}/sg"}
    """
    write(tmp_path, {"default.yaml": DEFAULT, "sg.yaml": text})
    policy = load_directory(tmp_path).policies["sg"]
    assert policy.sampling.rate == 0.2
    assert policy.sampling.sink.jsonl == "/tmp/samples/sg"
    assert policy.description == "cost ${NOT_A_VAR} in sgd"


def test_env_can_be_passed_explicitly() -> None:
    files = {"default.yaml": b"region: default\ndescription: ${WHO}\n"}
    loaded = load_files(PolicyFiles("d", files), env={"WHO": "ops"})
    assert loaded.policies["default"].description == "ops"


def test_deep_merge_semantics() -> None:
    base: dict[str, Any] = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": "x"}
    over = {"a": {"c": [3], "d": {"g": 2}}, "f": None}
    assert deep_merge(base, over) == {"a": {"b": 1, "c": [3], "d": {"e": 1, "g": 2}}, "f": None}
    assert base["a"]["d"] == {"e": 1}  # inputs are left alone


def test_a_group_attribute_or_subject_replaces_the_inherited_one_whole(tmp_path: Path) -> None:
    base = DEFAULT.replace("decision:\n", "decision:\n  subject: {jsonpath: $.id}\n", 1)
    region = """\
        region: sg
        extends: default
        groups: {attribute: {header: X-Group, trusted: true}}
        decision: {subject: {header: X-Subject, trusted: true}}
        models:
          - name: adult
          - name: credit
            groups: {attribute: {jsonpath: "$.parameters.group"}}
            decision: {subject: {jsonpath: "$.parameters.applicant"}}
        """
    write(tmp_path, {"default.yaml": base, "sg.yaml": region})
    assert validate_directory(tmp_path) == []
    adult, credit = load_directory(tmp_path).policies["sg"].models
    assert adult.groups.attribute is not None and credit.groups.attribute is not None
    assert adult.decision.subject is not None and credit.decision.subject is not None
    assert (adult.groups.attribute.header, adult.groups.attribute.input) == ("X-Group", None)
    assert (adult.decision.subject.header, adult.decision.subject.jsonpath) == ("X-Subject", None)
    assert credit.groups.attribute.jsonpath == "$.parameters.group"
    assert (credit.groups.attribute.header, credit.groups.attribute.trusted) == (None, False)
    assert (credit.decision.subject.jsonpath, credit.decision.subject.header) == (
        "$.parameters.applicant",
        None,
    )
    assert adult.groups.values == ("Female", "Male") and adult.decision.threshold == 0.5


def test_extends_merges_through_the_chain(tmp_path: Path) -> None:
    mid = "region: asia\nextends: default\nsampling: {redact: [nric]}\ndecision: {threshold: 0.6}\n"
    leaf = "region: sg\nextends: asia\ndecision:\n  per_group: {Male: 0.55}\n"
    write(tmp_path, {"default.yaml": DEFAULT, "asia.yaml": mid, "sg.yml": leaf})
    loaded = load_directory(tmp_path)
    sg = loaded.policies["sg"]
    assert sg.decision.per_group == {"Female": 0.45, "Male": 0.55}
    assert sg.decision.threshold == 0.6
    assert sg.sampling.redact == ("nric",)
    assert sg.sampling.rate == 0.05
    assert [Path(s).name for s in loaded.sources["sg"]] == ["default.yaml", "asia.yaml", "sg.yml"]


def test_only_extends_inherits(tmp_path: Path) -> None:
    write(tmp_path, {"default.yaml": DEFAULT, "sg.yaml": "region: sg\n"})
    assert load_directory(tmp_path).policies["sg"].sampling.rate == 0.0


def test_kubelet_layout_is_read_through_top_level_links(tmp_path: Path) -> None:
    atomic_write(tmp_path, {"default.yaml": DEFAULT, "sg.yaml": "region: sg\nextends: default\n"})
    (tmp_path / ".hidden.yaml").write_text("not: [valid")
    (tmp_path / "notes.txt").write_text("ignored")
    loaded = load_directory(tmp_path)
    assert set(loaded.policies) == {"default", "sg"}
    assert loaded.sources["sg"][-1] == str(tmp_path / "sg.yaml")


def test_a_broken_link_is_a_problem(tmp_path: Path) -> None:
    write(tmp_path, {"default.yaml": DEFAULT})
    (tmp_path / "sg.yaml").symlink_to(tmp_path / "elsewhere" / "sg.yaml")
    assert problems_of(tmp_path) == ["sg.yaml: cannot read: No such file or directory"]


def test_problem_format_and_error_text() -> None:
    problems = [Problem("b.yaml", 3, 5, "x (y)"), Problem("a.yaml", 0, 0, "z")]
    assert format_problems(problems) == "b.yaml:3:5: x (y)\na.yaml: z"
    assert str(PolicyError(problems)) == "a.yaml: z\nb.yaml:3:5: x (y)"


def test_undecodable_bytes_are_a_problem() -> None:
    files = {"default.yaml": b"region: default\n\xff\xfe\n"}
    with pytest.raises(PolicyError, match=r"d/default.yaml:2:1: not UTF-8"):
        load_files(PolicyFiles("d", files))


def load_with(sg: bytes) -> None:
    try:
        load_files(PolicyFiles("d", {"default.yaml": DEFAULT.encode(), "sg.yaml": sg}), env={})
    except PolicyError as exc:
        assert exc.problems and all(isinstance(p, Problem) for p in exc.problems)


FUZZ = settings(
    max_examples=int(os.environ.get("GUARDPROXY_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@FUZZ
@given(st.text(max_size=300))
def test_no_text_crashes_the_loader(text: str) -> None:
    load_with(text.encode())


@FUZZ
@given(st.binary(max_size=200))
def test_no_bytes_crash_the_loader(data: bytes) -> None:
    load_with(data)


SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
KEYS = st.sampled_from(
    ["rate", "threshold", "per_group", "values", "trip", "when", "signals", "input", "open", "x"]
)
TREES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3)
)
SECTIONS = st.sampled_from(
    ["model", "groups", "decision", "labels", "sampling", "drift", "fairness", "breaker", "x"]
)


@FUZZ
@given(st.dictionaries(SECTIONS, TREES, max_size=4), st.sampled_from(["sg", "th", None]))
def test_no_structure_crashes_the_loader(sections: dict[str, Any], region: str | None) -> None:
    doc = {"region": region, "extends": "default", **sections}
    load_with(yaml.safe_dump(doc).encode())


def test_billion_laughs_is_refused() -> None:
    lines = ["region: sg", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    files = {"default.yaml": b"region: default\n", "sg.yaml": "\n".join(lines).encode()}
    with pytest.raises(PolicyError, match=r"d/sg.yaml:\d+:\d+: document too large"):
        load_files(PolicyFiles("d", files))


def test_values_from_the_environment_are_remembered_and_masked_in_problems() -> None:
    env = {"FALLBACK": "http://svc:very-secret-pw@fallback:8082", "RATE": "nope-secret"}
    broken = b"region: default\nsampling: {rate: '${RATE}'}\n"
    with pytest.raises(PolicyError) as caught:
        load_files(PolicyFiles("<t>", {"default.yaml": broken}), env)
    text = "\n".join(str(p) for p in caught.value.problems)
    assert "sampling.rate: invalid value '***'" in text and "nope-secret" not in text
    good = (
        b"region: default\n"
        b"breaker: {open: {action: fallback, upstream: '${FALLBACK}'}}\n"
        b"description: '${UNSET:-a default is no secret}'\n"
    )
    loaded = load_files(PolicyFiles("<t>", {"default.yaml": good}), env)
    assert loaded.secrets == frozenset({env["FALLBACK"]})


@pytest.mark.parametrize(
    "secret",
    ["k" * 88, "pa\\ss-W0rd-42", "line\nbreak-secret", "s\u00e9same-secret-value"],
    ids=["cut", "backslash", "newline", "non-ascii"],
)
def test_a_secret_is_masked_however_a_problem_shows_it(secret: str) -> None:
    broken = b"region: default\nsampling: {rate: '${KEY}'}\n"
    with pytest.raises(PolicyError) as caught:
        load_files(PolicyFiles("<t>", {"default.yaml": broken}), {"KEY": secret})
    text = str(caught.value)
    assert "***" in text and secret[:6] not in text and repr(secret)[1:7] not in text


def baseline_doc(signals: dict[str, str], **entry: Any) -> str:
    bins = {"numeric": {"edges": [0.5]}, "categorical": {"categories": ["a"]}}
    groups = {
        "*": {
            name: {"kind": kind, **bins[kind], "counts": [1, 1], **entry}
            for name, kind in signals.items()
        }
    }
    return json.dumps({"version": 1, "groups": groups})


BASELINE_POLICY = """\
region: default
drift: {reference: {baseline: base.json}, signals: [score, {input: age}]}
models:
  - name: adult
"""


def test_a_baseline_that_is_missing_or_does_not_fit_is_a_problem(tmp_path: Path) -> None:
    write(tmp_path, {"default.yaml": BASELINE_POLICY})
    assert problems_of(tmp_path) == [
        "default.yaml:2:21: model 'adult': drift.reference.baseline cannot be read: "
        f"[Errno 2] No such file or directory: '{tmp_path}/base.json'"
    ]
    (tmp_path / "base.json").write_text(baseline_doc({"score": "numeric"}))
    assert "has no signal 'age'" in problems_of(tmp_path)[0]
    (tmp_path / "base.json").write_text(baseline_doc({"score": "numeric", "age": "categorical"}))
    assert "signal 'age' is categorical, not numeric" in problems_of(tmp_path)[0]
    (tmp_path / "base.json").write_text(baseline_doc({"score": "numeric", "age": "numeric"}))
    assert problems_of(tmp_path) == []
    loaded = load_directory(tmp_path).policies["default"].models[0]
    assert loaded.drift is not None and loaded.drift.reference.baseline == str(
        tmp_path / "base.json"
    )


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"counts": [1, 1, 1]}, "counts must be 2 numbers, one per bin"),
        ({"edges": [], "counts": [1, 1]}, "counts must be 1 numbers, one per bin"),
        ({"counts": [0, 0]}, "counts must not be negative, nor all zero"),
        ({"counts": [-1, 3]}, "counts must not be negative, nor all zero"),
        ({"counts": ["1", 1]}, "counts must be 2 numbers, one per bin"),
        ({"edges": [0.5, 0.2], "counts": [1, 1, 1]}, "edges must be finite numbers in increas"),
        ({"edges": [float("nan")]}, "edges must be finite numbers in increasing order"),
        ({"sample": [0.1, float("inf")]}, "sample must be finite numbers"),
    ],
)
def test_a_baseline_whose_reference_cannot_be_compared_with_is_a_problem(
    tmp_path: Path, entry: dict[str, Any], problem: str
) -> None:
    # Loaded, these failed every window of the model (or alarmed on a bin no value reaches).
    write(tmp_path, {"default.yaml": BASELINE_POLICY})
    (tmp_path / "base.json").write_text(baseline_doc({"score": "numeric", "age": "numeric"}))
    assert problems_of(tmp_path) == []
    doc = json.loads(baseline_doc({"score": "numeric", "age": "numeric"}))
    doc["groups"]["*"]["age"].update(entry)
    (tmp_path / "base.json").write_text(json.dumps(doc))
    (found,) = problems_of(tmp_path)
    assert f"base.json: signal 'age': {problem}" in found


def test_a_categorical_baseline_needs_a_count_per_category_and_other(tmp_path: Path) -> None:
    text = BASELINE_POLICY.replace("{input: age}", "{input: age, kind: categorical}")
    write(tmp_path, {"default.yaml": text})
    for entry, problem in [
        ({"categories": ["a", "b"]}, "counts must be 3 numbers, one per bin"),
        ({"categories": ["a", "a"], "counts": [1, 1, 1]}, "categories must not repeat"),
        ({"categories": [1]}, "categories must be a list of text"),
    ]:
        doc = json.loads(baseline_doc({"score": "numeric"}))
        doc["groups"]["*"]["age"] = {"kind": "categorical", "counts": [1, 1], **entry}
        (tmp_path / "base.json").write_text(json.dumps(doc))
        (found,) = problems_of(tmp_path)
        assert f"signal 'age': {problem}" in found


def test_an_unknown_key_in_a_model_lists_the_keys_a_model_takes(tmp_path: Path) -> None:
    write(tmp_path, {"default.yaml": "region: default\nmodels:\n  - name: a\n    decisoin: {}\n"})
    (problem,) = problems_of(tmp_path)
    assert problem.startswith("default.yaml:4:5: model 'a': decisoin: unknown key")
    assert "protocol, routes, score" in problem


def test_a_groups_own_baseline_reference_is_checked_too(tmp_path: Path) -> None:
    # The monitors compare a group's windows with the group's own reference when it has one.
    write(tmp_path, {"default.yaml": BASELINE_POLICY})
    doc = json.loads(baseline_doc({"score": "numeric", "age": "numeric"}))
    doc["groups"]["Female"] = {"age": {**doc["groups"]["*"]["age"], "counts": [0, 0]}}
    (tmp_path / "base.json").write_text(json.dumps(doc))
    (found,) = problems_of(tmp_path)
    assert "signal 'age' of group 'Female': counts must not be negative, nor all" in found
