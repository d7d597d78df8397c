# ruff: noqa: E501  (the registry reads best as one line per key)
"""No policy key without an effect: every key of the schema names the test that shows it.

A key is a dotted path from a region's policy file, `decision.adapt.tolerance`. The region's
sections are the defaults of every model, so their keys are listed once; a model's own keys
are under `models.`, and `models.<section>` is a model overriding its region's section. Each
entry names a test that would fail if the key were ignored. Adding a key to the schema
without an entry here, keeping an entry whose key is gone, or naming a test that does not
exist fails below (tests are found by parsing their files, never by importing them).
"""

from __future__ import annotations

import ast
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from guardproxy.policy.models import SECTIONS, ModelPolicy, Policy

ROOT = Path(__file__).resolve().parents[2]

EFFECTS: dict[str, str] = {
    # --- the region ---
    "region": "tests/policy/test_table.py::test_resolution_by_name_case_and_fallback",
    "extends": "tests/policy/test_loader.py::test_extends_merges_through_the_chain",
    "description": "tests/test_admin.py::test_status_shows_what_each_region_and_model_is_for",
    "unguarded": "tests/hotpath/test_unguarded.py::test_a_region_that_refuses_answers_404_and_the_model_is_never_asked",
    "unguarded.action": "tests/hotpath/test_unguarded.py::test_a_region_that_refuses_answers_404_and_the_model_is_never_asked",
    "unguarded.allow": "tests/hotpath/test_unguarded.py::test_what_the_region_allows_passes_and_guarded_routes_are_guarded",
    # --- groups ---
    "groups": "tests/guards/test_groups.py::test_group_per_row_from_input",
    "groups.attribute": "tests/guards/test_groups.py::test_group_per_row_from_input",
    "groups.attribute.header": "tests/guards/test_groups.py::test_group_from_header_with_other",
    "groups.attribute.input": "tests/guards/test_groups.py::test_group_per_row_from_input",
    "groups.attribute.jsonpath": "tests/guards/test_groups.py::test_group_from_jsonpath",
    "groups.attribute.trusted": "tests/guards/test_groups.py::test_a_group_header_needs_the_operator_to_trust_it",
    "groups.values": "tests/guards/test_groups.py::test_group_from_header_with_other",
    "groups.telemetry": "tests/telemetry/test_decisions.py::test_the_policy_decides_which_group_the_counters_carry",
    # --- decision ---
    "decision": "tests/guards/test_thresholds.py::test_headers_mode_leaves_body_bytes_untouched",
    "decision.threshold": "tests/guards/test_thresholds.py::test_the_policy_threshold_decides_for_groups_without_their_own",
    "decision.per_group": "tests/guards/test_thresholds.py::test_headers_mode_leaves_body_bytes_untouched",
    "decision.annotate": "tests/guards/test_thresholds.py::test_body_mode_appends_guardproxy_outputs",
    "decision.label_output": "tests/guards/test_thresholds.py::test_rewrite_replaces_the_output_the_policy_names",
    "decision.on_error": "tests/guards/test_thresholds.py::test_fail_closed_replies_502",
    "decision.subject": "tests/guards/test_draws.py::test_a_subject_path_selects_the_row_subject",
    "decision.subject.header": "tests/guards/test_draws.py::test_a_trusted_subject_header_decides_for_the_applicant",
    "decision.subject.jsonpath": "tests/guards/test_draws.py::test_a_subject_path_selects_the_row_subject",
    "decision.subject.trusted": "tests/guards/test_draws.py::test_subject_needs_one_source_and_a_trusted_header",
    # --- decision.adapt (the fairness engine) ---
    "decision.adapt": "tests/monitors/test_engine.py::test_run_due_calibrates_every_adapt_interval",
    "decision.adapt.constraint": "tests/monitors/test_engine.py::test_constraint_objective_cost_and_tolerance_choose_the_fit",
    "decision.adapt.objective": "tests/monitors/test_engine.py::test_constraint_objective_cost_and_tolerance_choose_the_fit",
    "decision.adapt.cost": "tests/monitors/test_engine.py::test_constraint_objective_cost_and_tolerance_choose_the_fit",
    "decision.adapt.tolerance": "tests/monitors/test_engine.py::test_constraint_objective_cost_and_tolerance_choose_the_fit",
    "decision.adapt.min_labels_per_group": "tests/monitors/test_engine.py::test_calibration_waits_for_min_labels",
    "decision.adapt.max_step": "tests/monitors/test_engine.py::test_max_step_from_the_policy_bounds_each_move",
    "decision.adapt.every": "tests/monitors/test_engine.py::test_run_due_calibrates_every_adapt_interval",
    "decision.adapt.pinned": "tests/monitors/test_engine.py::test_pinned_groups_keep_the_policy_threshold",
    # --- labels ---
    "labels": "tests/guards/test_labels.py::test_suppress_removes_denied_labels",
    "labels.deny": "tests/guards/test_labels.py::test_suppress_removes_denied_labels",
    "labels.action": "tests/guards/test_labels.py::test_flag_keeps_answer_and_marks_it",
    "labels.output": "tests/guards/test_labels.py::test_the_output_the_policy_names_holds_the_labels",
    "labels.path": "tests/payloads/test_payloads.py::test_jsonpath_protocol_scores_labels_and_rewrite",
    "labels.block": "tests/guards/test_labels.py::test_block_replies_with_policy_status_and_count_only",
    "labels.block.status": "tests/guards/test_labels.py::test_block_replies_with_policy_status_and_count_only",
    "labels.block.message": "tests/guards/test_labels.py::test_block_replies_with_policy_status_and_count_only",
    "labels.on_error": "tests/guards/test_labels.py::test_label_failure_fail_closed",
    # --- sampling ---
    "sampling": "tests/guards/test_sampling.py::test_rate_sampling_is_deterministic_by_content_and_near_rate",
    "sampling.rate": "tests/guards/test_sampling.py::test_rate_sampling_is_deterministic_by_content_and_near_rate",
    "sampling.min_per_group": "tests/guards/test_sampling.py::test_stratified_minimum_for_a_rare_group",
    "sampling.window": "tests/guards/test_sampling.py::test_stratified_minimum_for_a_rare_group",
    "sampling.max_always": "tests/integration/test_attack_samples.py::test_a_model_that_fails_on_purpose_cannot_fill_the_samples",
    "sampling.redact": "tests/guards/test_sampling.py::test_samples_are_redacted_as_the_policy_says",
    "sampling.detectors": "tests/guards/test_sampling.py::test_samples_are_redacted_as_the_policy_says",
    "sampling.max_body_bytes": "tests/integration/test_attack_samples.py::test_the_samples_directory_stays_within_its_byte_budget",
    # --- sampling.sink (the default policy's, for the whole process) ---
    "sampling.sink": "tests/test_app.py::test_samples_go_to_the_policys_directory_in_files_of_its_size",
    "sampling.sink.jsonl": "tests/test_app.py::test_samples_go_to_the_policys_directory_in_files_of_its_size",
    "sampling.sink.max_bytes": "tests/test_app.py::test_samples_go_to_the_policys_directory_in_files_of_its_size",
    "sampling.sink.retention": "tests/test_app.py::test_samples_go_to_the_policys_directory_in_files_of_its_size",
    "sampling.sink.max_age": "tests/test_app.py::test_a_file_is_closed_once_it_is_as_old_as_max_age",
    "sampling.sink.max_total_bytes": "tests/integration/test_attack_samples.py::test_the_samples_directory_stays_within_its_byte_budget",
    "sampling.sink.redis_stream": "tests/test_app.py::test_samples_go_to_the_redis_stream_the_policy_names",
    "sampling.sink.queue": "tests/test_app.py::test_the_sample_queue_holds_as_many_samples_as_the_policy_says",
    "sampling.sink.queue_bytes": "tests/test_app.py::test_the_sample_queue_holds_no_more_bytes_than_the_policy_says",
    # --- drift ---
    "drift": "tests/monitors/test_watchdog.py::test_age_shift_opens_the_models_breaker_after_two_windows",
    "drift.reference": "tests/monitors/test_drift.py::test_bank_warms_up_then_detects_real_drift_on_adult",
    "drift.reference.warmup": "tests/monitors/test_drift.py::test_bank_warms_up_then_detects_real_drift_on_adult",
    "drift.reference.baseline": "tests/monitors/test_watchdog.py::test_a_baseline_file_replaces_the_warm_up_of_the_signals_it_holds",
    "drift.window": "tests/monitors/test_drift.py::test_bank_skips_invalid_values_without_raising",
    "drift.window_seconds": "tests/monitors/test_drift.py::test_a_time_window_from_the_policy_closes_on_the_clock_not_the_count",
    "drift.signals": "tests/monitors/test_drift.py::test_bank_warms_up_then_detects_real_drift_on_adult",
    "drift.signals.input": "tests/monitors/test_drift.py::test_bank_warms_up_then_detects_real_drift_on_adult",
    "drift.signals.kind": "tests/monitors/test_drift.py::test_bank_warms_up_then_detects_real_drift_on_adult",
    "drift.bins": "tests/monitors/test_drift.py::test_a_warm_up_reference_has_the_policys_number_of_bins",
    "drift.tests": "tests/monitors/test_drift.py::test_the_policy_chooses_the_drift_tests_and_their_bounds",
    "drift.tests.psi": "tests/monitors/test_drift.py::test_the_policy_chooses_the_drift_tests_and_their_bounds",
    "drift.tests.psi.warn": "tests/monitors/test_drift.py::test_the_policy_chooses_the_drift_tests_and_their_bounds",
    "drift.tests.psi.alarm": "tests/monitors/test_drift.py::test_the_policy_chooses_the_drift_tests_and_their_bounds",
    "drift.tests.ks": "tests/monitors/test_drift.py::test_the_policy_chooses_the_drift_tests_and_their_bounds",
    "drift.tests.ks.p_value": "tests/monitors/test_drift.py::test_the_policy_chooses_the_drift_tests_and_their_bounds",
    "drift.tests.js": "tests/monitors/test_drift.py::test_the_policy_chooses_the_drift_tests_and_their_bounds",
    "drift.tests.js.alarm": "tests/monitors/test_drift.py::test_the_policy_chooses_the_drift_tests_and_their_bounds",
    "drift.tests.chi2": "tests/monitors/test_drift.py::test_the_policy_chooses_the_drift_tests_and_their_bounds",
    "drift.tests.chi2.p_value": "tests/monitors/test_drift.py::test_the_policy_chooses_the_drift_tests_and_their_bounds",
    "drift.correction": "tests/monitors/test_drift.py::test_bonferroni_divides_the_p_value_by_the_signals_unless_the_policy_says_none",
    # --- fairness ---
    "fairness": "tests/monitors/test_watchdog.py::test_fairness_windows_of_single_rows_trip_disparate_impact",
    "fairness.disparate_impact": "tests/monitors/test_fairness.py::test_bounds_come_from_the_policy_and_a_gap_within_noise_is_not_significant",
    "fairness.disparate_impact.min_ratio": "tests/monitors/test_fairness.py::test_bounds_come_from_the_policy_and_a_gap_within_noise_is_not_significant",
    "fairness.equal_opportunity": "tests/monitors/test_fairness.py::test_bounds_come_from_the_policy_and_a_gap_within_noise_is_not_significant",
    "fairness.equal_opportunity.max_difference": "tests/monitors/test_fairness.py::test_bounds_come_from_the_policy_and_a_gap_within_noise_is_not_significant",
    "fairness.bins": "tests/monitors/test_engine.py::test_histogram_bins_and_the_score_range_come_from_the_policy",
    "fairness.window": "tests/monitors/test_watchdog.py::test_fairness_windows_close_on_decisions_and_on_labels",
    # --- breaker ---
    "breaker": "tests/breaker/test_state.py::test_trips_after_n_consecutive_windows_and_not_before",
    "breaker.trip": "tests/breaker/test_state.py::test_trips_after_n_consecutive_windows_and_not_before",
    "breaker.trip.when": "tests/breaker/test_state.py::test_trips_after_n_consecutive_windows_and_not_before",
    "breaker.trip.above": "tests/breaker/test_state.py::test_trips_after_n_consecutive_windows_and_not_before",
    "breaker.trip.below": "tests/breaker/test_state.py::test_below_rule_trips",
    "breaker.trip.windows": "tests/breaker/test_state.py::test_trips_after_n_consecutive_windows_and_not_before",
    "breaker.open": "tests/integration/test_drift_shift.py::test_flag_action_serves_and_marks_the_answer",
    "breaker.open.action": "tests/integration/test_drift_shift.py::test_flag_action_serves_and_marks_the_answer",
    "breaker.open.upstream": "tests/integration/test_breaker_proxy.py::test_fallback_while_forced_open_and_back_to_primary_when_closed",
    "breaker.cooldown": "tests/breaker/test_state.py::test_cooldown_moves_to_half_open_on_admit_or_tick",
    "breaker.half_open": "tests/breaker/test_state.py::test_probe_cap_holds_under_many_concurrent_callers",
    "breaker.half_open.probes": "tests/breaker/test_state.py::test_probe_cap_holds_under_many_concurrent_callers",
    "breaker.half_open.close_after_windows": "tests/breaker/test_state.py::test_half_open_closes_after_as_many_healthy_windows_as_the_policy_says",
    "breaker.half_open.max_seconds": "tests/breaker/test_state.py::test_half_open_ends_within_max_seconds_either_way",
    "breaker.window": "tests/breaker/test_state.py::test_the_upstream_window_and_slow_calls_are_as_long_as_the_policy_says",
    "breaker.slow_call": "tests/breaker/test_state.py::test_the_upstream_window_and_slow_calls_are_as_long_as_the_policy_says",
    "breaker.min_calls": "tests/breaker/test_state.py::test_rates_count_only_from_min_calls_calls_a_window",
    # --- models: each model's own keys ---
    "models": "tests/policy/test_table.py::test_paths_resolve_to_their_model_or_to_none",
    "models.name": "tests/policy/test_table.py::test_paths_resolve_to_their_model_or_to_none",
    "models.description": "tests/test_admin.py::test_status_shows_what_each_region_and_model_is_for",
    "models.protocol": "tests/payloads/test_payloads.py::test_tfserving_rows_columns_and_predictions",
    "models.routes": "tests/policy/test_table.py::test_paths_resolve_to_their_model_or_to_none",
    "models.score": "tests/payloads/test_payloads.py::test_v2_scores_by_output_and_column",
    "models.score.output": "tests/payloads/test_payloads.py::test_v2_scores_by_output_and_column",
    "models.score.index": "tests/payloads/test_payloads.py::test_v2_scores_by_output_and_column",
    "models.score.path": "tests/payloads/test_payloads.py::test_jsonpath_protocol_scores_labels_and_rewrite",
    "models.score.range": "tests/monitors/test_engine.py::test_histogram_bins_and_the_score_range_come_from_the_policy",
    # --- models: a model's own sections over its region's ---
    "models.groups": "tests/policy/test_models.py::test_a_model_overrides_only_the_section_keys_it_names",
    "models.decision": "tests/policy/test_models.py::test_a_model_overrides_only_the_section_keys_it_names",
    "models.labels": "tests/policy/test_models.py::test_a_model_overrides_only_the_section_keys_it_names",
    "models.sampling": "tests/policy/test_models.py::test_a_model_overrides_only_the_section_keys_it_names",
    "models.drift": "tests/policy/test_models.py::test_a_model_overrides_only_the_section_keys_it_names",
    "models.fairness": "tests/policy/test_models.py::test_a_model_overrides_only_the_section_keys_it_names",
    "models.breaker": "tests/policy/test_models.py::test_a_model_overrides_only_the_section_keys_it_names",
}


def _models_in(annotation: object) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation holds: itself, or inside Optional, unions, tuples."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for argument in typing.get_args(annotation):
        yield from _models_in(argument)


def _keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every dotted key of a model and of the models nested in it."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path
        if model is Policy and name == "models":
            yield from _model_keys(f"{path}.")
            continue
        for nested in _models_in(field.annotation):
            yield from _keys(nested, f"{path}.")


def _model_keys(prefix: str) -> Iterator[str]:
    """A model's own keys in full; its sections by name only (their keys are the region's)."""
    for name, field in ModelPolicy.model_fields.items():
        yield f"{prefix}{name}"
        if name not in SECTIONS:
            for nested in _models_in(field.annotation):
                yield from _keys(nested, f"{prefix}{name}.")


def schema_keys() -> set[str]:
    """Every key a policy file may set."""
    return set(_keys(Policy))


@cache
def functions_of(path: str) -> frozenset[str]:
    """The names of a test file's module-level test functions, read from its syntax tree."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"), filename=path)
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    return frozenset(
        node.name
        for node in tree.body
        if isinstance(node, functions) and node.name.startswith("test_")
    )


def test_the_walk_reaches_nested_lists_options_and_a_models_own_keys() -> None:
    keys = schema_keys()
    assert {"breaker.trip.below", "drift.signals.kind", "drift.tests.js.alarm"} <= keys
    assert {"models.score.range", "models.description", "models.decision"} <= keys
    assert "models.decision.threshold" not in keys  # the region's decision.threshold


def test_every_policy_key_names_the_test_that_shows_its_effect() -> None:
    missing = sorted(schema_keys() - EFFECTS.keys())
    assert not missing, (
        f"policy keys with no test of their effect: {', '.join(missing)}; "
        "add each to EFFECTS with the test that would fail if the key were ignored"
    )


def test_every_entry_names_a_key_the_schema_still_has() -> None:
    stale = sorted(EFFECTS.keys() - schema_keys())
    assert not stale, f"EFFECTS names keys the schema no longer has: {', '.join(stale)}"


def test_every_named_test_exists() -> None:
    broken = []
    for key, target in sorted(EFFECTS.items()):
        path, _, name = target.partition("::")
        if not (path.startswith("tests/") and (ROOT / path).is_file()):
            broken.append(f"{key}: no test file {path}")
        elif name not in functions_of(path):
            broken.append(f"{key}: {path} has no test function {name!r}")
    assert not broken, "\n".join(broken)
