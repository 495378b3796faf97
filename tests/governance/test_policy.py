"""The policy rules one by one, as the pure function sees them."""

from datetime import UTC, datetime, timedelta

import pytest

from core.errors import InvalidInput
from governance.policy import Facts, evaluate, parse_new_rules, parse_rules

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def facts(**overrides) -> Facts:
    base = {
        "version_status": "registered",
        "digest": "sha256:" + "a" * 64,
        "metrics": {"auc": 0.91},
        "metric_sources": {},
        "now": NOW,
    }
    return Facts(**{**base, **overrides})


def check(rules: dict, **fact_overrides):
    results = {c.rule: c for c in evaluate(parse_rules(rules), facts(**fact_overrides), target_kind="self_hosted")}
    return results


def test_only_status_rule_by_default():
    assert list(check({})) == ["version_status"]
    assert check({})["version_status"].passed
    archived = check({}, version_status="archived")["version_status"]
    assert not archived.passed and "archived" in archived.reason


@pytest.mark.parametrize(
    "op, threshold, passed",
    [(">=", 0.91, True), (">", 0.91, False), ("<", 0.95, True), ("<=", 0.5, False), ("==", 0.91, True)],
)
def test_metric_gate(op, threshold, passed):
    result = check({"metric_gates": [{"metric": "auc", "op": op, "threshold": threshold}]})["metric:auc"]
    assert result.passed is passed
    assert "auc = 0.91" in result.reason


def test_metric_gate_missing_metric_and_dataset():
    missing = check({"metric_gates": [{"metric": "f1", "op": ">=", "threshold": 0.5}]})["metric:f1"]
    assert not missing.passed and "reports no f1" in missing.reason
    gate = {"metric": "auc", "op": ">=", "threshold": 0.9, "split": "test"}
    wrong_split = check({"metric_gates": [gate]}, metric_sources={"auc": {"split": "train"}})["metric:auc"]
    assert not wrong_split.passed and "train" in wrong_split.reason
    right_split = check({"metric_gates": [gate]}, metric_sources={"auc": {"split": "test"}})["metric:auc"]
    assert right_split.passed


def test_card_sections():
    rules = {"required_card_sections": ["intended_use", "training_data"]}
    assert "no model card" in check(rules)["card_sections"].reason
    partial = check(rules, card_revision=2, card_sections_filled=frozenset({"intended_use"}))["card_sections"]
    assert not partial.passed and "training_data" in partial.reason and "revision 2" in partial.reason
    full = check(rules, card_revision=3, card_sections_filled=frozenset({"intended_use", "training_data"}))
    assert full["card_sections"].passed


def test_license_allow_list():
    rules = {"allowed_licenses": ["apache-2.0", "mit"]}
    assert check(rules, card_license="mit")["license"].passed
    denied = check(rules, card_license="cc-by-nc-4.0")["license"]
    assert not denied.passed and "cc-by-nc-4.0" in denied.reason
    assert "not stated" in check(rules)["license"].reason


def test_lineage():
    rules = {"require_lineage": True}
    none = check(rules)["lineage"]
    assert not none.passed and "dataset" in none.reason and "commit" in none.reason
    assert check(rules, lineage_datasets_with_digest=2, code_commit="abc1234")["lineage"].passed


def test_signature_and_digest():
    assert "no signature" in check({"require_signature": True})["signature"].reason
    bad = check({"require_signature": True}, signature_verified=False, signature_reason="model.bin changed")
    assert not bad["signature"].passed and "model.bin" in bad["signature"].reason
    assert check({"require_signature": True}, signature_verified=True)["signature"].passed
    assert not check({"require_verified_digest": True}, digest_verified=None)["digest_verified"].passed
    assert check({"require_verified_digest": True}, digest_verified=True)["digest_verified"].passed


def test_live_on_stage():
    rules = {"min_live_on_stage": {"stage": "staging", "hours": 24}}
    assert "has not been live" in check(rules)["live_on_stage"].reason
    short = check(rules, live_since={"staging": NOW - timedelta(hours=3)})["live_on_stage"]
    assert not short.passed and "3.0 h of the 24 h" in short.reason
    assert check(rules, live_since={"staging": NOW - timedelta(hours=25)})["live_on_stage"].passed


@pytest.mark.parametrize("hours", [87601, 1e11])
def test_a_new_policy_holds_at_most_ten_years_of_soak(hours):
    """Accepted, 1e11 hours made every evaluation on the target a 500 (timedelta overflow), the review queue's
    too. The bound is for policies being set; one stored before it is still read (below)."""
    rules = {"min_live_on_stage": {"stage": "staging", "hours": hours}}
    with pytest.raises(InvalidInput) as err:
        parse_new_rules(rules)
    assert "policy.min_live_on_stage.hours: must be at most 87600" in err.value.message
    assert parse_rules(rules).min_live_on_stage.hours == hours


def test_a_soak_stored_before_hours_were_bounded_still_evaluates():
    """A stored policy with hours beyond what a timedelta holds fails its check instead of raising."""
    rules = {"min_live_on_stage": {"stage": "staging", "hours": 1e11}}
    soak = check(rules, live_since={"staging": NOW - timedelta(days=400)})["live_on_stage"]
    assert not soak.passed and "of the 1e+11 h required" in soak.reason


@pytest.mark.parametrize(
    "rules, field",
    [
        ({"approvals_required": -1}, "approvals_required"),
        ({"approvals_required": True}, "approvals_required"),
        ({"metric_gates": [{"metric": "auc", "op": "~", "threshold": 1}]}, "metric_gates[0].op"),
        ({"metric_gates": [{"metric": "auc", "op": ">=", "threshold": "high"}]}, "metric_gates[0].threshold"),
        ({"required_card_sections": ["vibes"]}, "required_card_sections"),
        ({"quorum": 2}, "quorum"),
        ({"min_live_on_stage": {"stage": "staging"}}, "min_live_on_stage"),
        # An int beyond a double's range: math.isfinite raised OverflowError, a 500.
        ({"metric_gates": [{"metric": "auc", "op": ">=", "threshold": 10**400}]}, "metric_gates[0].threshold"),
        ({"min_live_on_stage": {"stage": "staging", "hours": 10**400}}, "min_live_on_stage.hours"),
    ],
)
def test_bad_policies_name_the_field(rules, field):
    with pytest.raises(InvalidInput) as err:
        parse_rules(rules)
    assert f"policy.{field}" in err.value.message
