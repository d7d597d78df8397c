"""The policy schema: durations, ranges and cross-field checks."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from guardproxy.policy.models import SECTIONS, AdaptSpec, BreakerSpec, DriftSpec, Policy, PsiSpec

GROUPS = {"attribute": {"input": "sex"}, "values": ["Female", "Male"]}


def policy(model: dict[str, Any] | None = None, **sections: Any) -> Policy:
    """Region sg with one model "m" (`model`: its own keys) under the given region sections."""
    models = [{"name": "m", **(model or {})}]
    return Policy.model_validate({"region": "sg", "models": models, **sections})


def rejects(fragment: str, model: dict[str, Any] | None = None, **sections: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        policy(model, **sections)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("60s", 60.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        (90, 90.0),
        ("1.5", 1.5),
    ],
)
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    assert AdaptSpec.model_validate({"every": text}).every == seconds


@pytest.mark.parametrize("bad", ["5 days", "-1s", "0s", 0, True, "soon"])
def test_bad_durations_are_rejected(bad: object) -> None:
    with pytest.raises(ValidationError):
        BreakerSpec.model_validate({"cooldown": bad})


def test_defaults_are_valid_and_frozen() -> None:
    loaded = policy()
    assert loaded.decision.threshold == 0.5
    with pytest.raises(ValidationError):
        loaded.region = "th"


@pytest.mark.parametrize(
    ("sections", "fragment"),
    [
        ({"sampling": {"rate": 1.5}}, "less than or equal to 1"),
        ({"sampling": {"rate": -0.1}}, "greater than or equal to 0"),
        ({"labels": {"block": {"status": 302}}}, "greater than or equal to 400"),
        ({"drift": {"bins": 1}}, "greater than or equal to 2"),
        ({"fairness": {"disparate_impact": {"min_ratio": 2}}}, "less than or equal to 1"),
        ({"decision": {"threshold": 1.2}}, "outside score range"),
        ({"model": {"score": {"range": [1, 0]}}}, "low < high"),
        ({"model": {"name": "a/b"}}, "should match pattern"),
        ({"model": {"protocol": "jsonpath"}}, "needs routes"),
        ({"region": "s g"}, "should match pattern"),
        ({"sampling": {"rate": 0.1, "rat": 1}}, "Extra inputs are not permitted"),
        ({"model": {"score": {"range": [0, float("inf")]}}}, "finite number"),
        ({"decision": {"threshold": float("nan")}}, "finite number"),
        ({"breaker": {"cooldown": float("inf")}}, "finite number"),
        ({"breaker": {"cooldown": 1e308}}, "less than or equal to 31622400"),
        ({"labels": {"deny": ["ape", " "]}}, "an empty term matches nothing"),
        (
            {
                "drift": {"window": 100},
                "breaker": {"trip": [{"when": "drift.score.js", "above": 0.2}]},
            },
            "tests.js, which is off",
        ),
        (
            {
                "drift": {"window": 100},
                "breaker": {"trip": [{"when": "drift.score.chi2", "below": 0.01}]},
            },
            "categorical signals only",
        ),
        ({"labels": {"deny": ["x" * 101]}}, "a term of 101 characters; at most 100"),
        ({"labels": {"deny": [f"t{i}" for i in range(10_001)]}}, "10001 terms; at most 10000"),
    ],
)
def test_out_of_range_values_are_rejected(sections: dict[str, Any], fragment: str) -> None:
    rejects(fragment, **sections)


def test_per_group_must_name_a_declared_group() -> None:
    rejects("undeclared group 'Other'", groups=GROUPS, decision={"per_group": {"Other": 0.4}})
    assert policy(groups=GROUPS, decision={"per_group": {"Female": 0.4}}).decision.per_group


def test_per_group_threshold_must_lie_in_score_range() -> None:
    rejects("outside score range", groups=GROUPS, decision={"per_group": {"Male": 1.5}})


def test_fallback_needs_an_upstream() -> None:
    rejects("needs open.upstream", breaker={"open": {"action": "fallback"}})
    spec = {"open": {"action": "fallback", "upstream": "http://127.0.0.1:8082"}}
    assert policy(breaker=spec).breaker.open.upstream == "http://127.0.0.1:8082"


def test_unknown_breaker_monitor_is_rejected() -> None:
    rejects(
        "unknown monitor 'latency.p99'", breaker={"trip": [{"when": "latency.p99", "above": 1}]}
    )


def test_trip_rule_needs_exactly_one_bound() -> None:
    rule = {"when": "upstream.error_rate", "above": 0.5, "below": 0.1}
    rejects("exactly one of above, below", breaker={"trip": [rule]})


def test_drift_rule_needs_a_drift_section() -> None:
    rule = {"when": "drift.score.psi", "above": 0.25}
    rejects("needs a drift section", breaker={"trip": [rule]})
    assert policy(drift={}, breaker={"trip": [rule]}).breaker.trip[0].above == 0.25


def test_drift_rule_must_name_a_watched_signal() -> None:
    rule = {"when": "drift.age.psi", "above": 0.25}
    rejects("names no drift signal", drift={}, breaker={"trip": [rule]})
    assert policy(drift={"signals": ["score", {"input": "age"}]}, breaker={"trip": [rule]})


def test_fairness_rule_needs_a_fairness_section() -> None:
    rule = {"when": "fairness.disparate_impact", "below": 0.8}
    rejects("needs a fairness section", breaker={"trip": [rule]})


def test_cost_objective_needs_costs() -> None:
    rejects("needs cost", decision={"adapt": {"objective": "cost"}})


def test_routes_must_be_absolute() -> None:
    rejects("must start with /", model={"routes": ["v2/models/*/infer"]})


@pytest.mark.parametrize(
    ("route", "fragment"),
    [
        ("/v2//infer", "repeated slashes collapsed"),
        ("/v2/./infer", ". and .. segments resolved"),
        ("/v2/models/x/..", ". and .. segments resolved"),
        ("/v2/%41", "%41 decoded (expected 'A')"),
        ("/v2/a%3ab", "upper case (expected %3A)"),
        ("/v2/a%2Fb", "holding %2F is refused"),
        ("/v2/x?y=1", "without their query"),
        ("/guardproxy/v1/x", "the proxy answers /guardproxy/ itself"),
    ],
)
def test_routes_no_path_can_match_are_refused(route: str, fragment: str) -> None:
    # Each validated, and its model's requests went through unguarded.
    rejects(f"route {route!r} can never match: ", model={"routes": [route]})
    rejects(fragment, model={"routes": [route]})


def test_routes_that_paths_can_match_are_kept() -> None:
    routes = ["/v2/x/", "/v2/a%3Ab", "/v1/models/m:predict", "/a/**", "/guardproxyish/x", "/"]
    assert policy({"routes": routes}).models[0].routes == tuple(routes)


@pytest.mark.parametrize("name", [".", ".."])
def test_a_model_name_may_not_be_a_dot_segment(name: str) -> None:
    with pytest.raises(ValidationError, match="is a dot segment"):
        Policy.model_validate({"region": "sg", "models": [{"name": name}]})


def test_group_values_must_be_distinct() -> None:
    rejects("empty or repeated", groups={"values": ["Female", "Female"]})


def test_psi_warn_not_above_alarm() -> None:
    with pytest.raises(ValidationError, match="above alarm"):
        PsiSpec(warn=0.3, alarm=0.2)


def test_signals_accept_score_and_inputs() -> None:
    drift = DriftSpec.model_validate(
        {"signals": ["score", {"input": "race", "kind": "categorical"}]}
    )
    assert drift.signals[1] != "score"
    with pytest.raises(ValidationError):
        DriftSpec.model_validate({"signals": ["latency"]})


def test_sample_sink_budget_must_hold_one_file() -> None:
    with pytest.raises(ValidationError, match="max_total_bytes 2048 is below"):
        policy(sampling={"sink": {"max_bytes": 4096, "max_total_bytes": 2048}})
    sink = policy(sampling={"sink": {"retention": "7d"}}).sampling.sink
    assert sink.retention == 7 * 86400 and sink.max_total_bytes >= sink.max_bytes


def test_a_model_overrides_only_the_section_keys_it_names() -> None:
    region = {
        "groups": {"attribute": {"input": "sex"}, "values": ["F", "M"], "telemetry": "hashed"},
        "decision": {"threshold": 0.6, "annotate": "body"},
        "labels": {"deny": ["ape"], "action": "flag"},
        "sampling": {"rate": 0.1, "min_per_group": 5},
        "drift": {"window": 100, "bins": 5},
        "fairness": {"window": 50, "bins": 20},
        "breaker": {"cooldown": "30s", "min_calls": 5},
    }
    own = {
        "groups": {"telemetry": "none"},
        "decision": {"threshold": 0.7},
        "labels": {"action": "block"},
        "sampling": {"rate": 0.2},
        "drift": {"window": 200},
        "fairness": {"window": 60},
        "breaker": {"cooldown": 40.0},
    }
    models = [{"name": "own", **own}, {"name": "plain"}]
    policy = Policy.model_validate({"region": "sg", **region, "models": models})
    assert set(own) == set(SECTIONS)
    for section, override in own.items():
        defaults = getattr(policy, section).model_dump()
        assert getattr(policy.model("plain"), section).model_dump() == defaults
        mine = getattr(policy.model("own"), section).model_dump()
        assert {k: v for k, v in mine.items() if v != defaults[k]} == override
