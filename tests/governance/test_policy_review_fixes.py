"""Fixes from the policy review: rules that passed without checking what they say (a verified digest or a
signature on a host that deploys something else, a license the README contradicts), an approval that outlived
its approver's view of the model, and writes a retry repeated (a second release of one version, a new policy
version of the same rules that voided the approvals given)."""

import hashlib

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from accounts import scopes
from accounts import services as accounts
from audit.models import AuditEvent
from governance import selectors, services
from governance.models import DeploymentTarget, Policy, PromotionRequest, Release
from governance.policy import Facts, evaluate, parse_rules
from registry import services as registry
from registry.models import ModelVersion, RegisteredModel
from tests.conftest import Persona
from tests.governance.conftest import MODEL, POLICY, promote
from tests.registry.helpers import s3_manifest
from tests.ui import builders

DIGEST_POLICY = {"approvals_required": 1, "approver_groups": ["reviewers"], "require_verified_digest": True}
REPLICATE = {"owner": "acme", "deployment": "churn", "model": "acme/churn"}


def approve(persona, pk):
    return persona.client().post(f"/api/v1/promotions/{pk}/approve", {}, format="json")


def stored_version(owner, model, seed: str, tags=None) -> ModelVersion:
    """A registry:// version whose files are stored under their sha256."""
    contents = [f"{seed}-{i}".encode() for i in range(2)]
    for content in contents:
        registry.blob_upload(
            model=model, chunks=[content], sha256=hashlib.sha256(content).hexdigest(), size=len(content)
        )
    version, _ = registry.version_register(
        actor=owner,
        model=model,
        content=registry.VersionContent(manifest=s3_manifest(*contents), metrics={"auc": 0.9}),
        tags=tags,
    )
    registry.card_revision_add(actor=owner, version=version, content=builders.CARD_WITH_TRAINING_DATA)
    return version


def replicate_target(admin, policy: dict):
    return services.target_create(
        actor=admin,
        name="rep",
        kind="replicate",
        stage="production",
        config=REPLICATE,
        credentials_ref="env:REPLICATE_API_TOKEN",
        policy=policy,
    )


def checks_of(version, target) -> dict:
    return {c.rule: c for c in selectors.promotion_evaluate(version=version, target=target).checks}


# --- 1. A verified digest (or signature) says nothing about what a managed host deploys ---------------------


def test_verified_digest_fails_on_a_replicate_target_that_deploys_the_host_revision_tag(personas):
    admin, owner = personas["admin"].user, personas["owner"].user
    churn = builders.model(owner)
    replicate = replicate_target(admin, DIGEST_POLICY)
    self_hosted = builders.target(admin, name="fleet", policy=DIGEST_POLICY)
    unrelated = "acme/churn:" + "f" * 64  # any Replicate version: nothing ties it to the registered bytes
    version = stored_version(owner, churn, "a", tags={"host_revision": unrelated})

    on_replicate = checks_of(version, replicate)["digest_verified"]
    assert not on_replicate.passed
    assert "replicate" in on_replicate.reason and "host_revision" in on_replicate.reason
    assert "self-hosted" in on_replicate.reason, on_replicate.reason
    assert checks_of(version, self_hosted)["digest_verified"].passed  # the fleet copies the stored bytes

    request = services.promotion_request(actor=owner, version=version, target=replicate)
    refused = approve(personas["reviewer"], request.pk)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "rules_failing", refused.json()
    assert "digest_verified" in refused.json()["error"]["message"]
    assert PromotionRequest.objects.get(pk=request.pk).state == "pending" and not Release.objects.exists()


def test_a_policy_needing_no_approvals_does_not_deploy_an_unchecked_host_revision(personas):
    admin, owner = personas["admin"].user, personas["owner"].user
    churn = builders.model(owner)
    replicate = replicate_target(admin, {**DIGEST_POLICY, "approvals_required": 0})
    version = stored_version(owner, churn, "b", tags={"host_revision": "acme/churn:" + "e" * 64})
    request = services.promotion_request(actor=owner, version=version, target=replicate)
    assert request.state == "pending" and not Release.objects.exists()


@pytest.mark.parametrize("kind", ["replicate", "hf_endpoint", "modal"])
def test_digest_and_signature_rules_fail_for_every_kind_that_deploys_a_host_revision(kind):
    rules = parse_rules({"require_verified_digest": True, "require_signature": True})
    facts = Facts(
        version_status="registered",
        digest="sha256:" + "a" * 64,
        metrics={},
        metric_sources={},
        digest_verified=True,
        digest_detail="all 2 files are stored under their sha256.",
        signature_verified=True,
        signature_reason="key abc",
    )
    managed = {c.rule: c for c in evaluate(rules, facts, target_kind=kind)}
    for rule in ("digest_verified", "signature"):
        assert not managed[rule].passed and f"target kind {kind}" in managed[rule].reason, managed[rule]
        assert "self-hosted" in managed[rule].reason
    fleet = {c.rule: c for c in evaluate(rules, facts, target_kind="self_hosted")}
    assert fleet["digest_verified"].passed and fleet["signature"].passed


# --- 2. An approval counts only while its approver may view the model and the target --------------------------


@pytest.fixture
def outside_approver(world):
    """A member of an approver group who may view acme/churn and prod only by object grants (no role)."""
    Group.objects.create(name="churn-approvers")
    user = get_user_model().objects.create_user(username="x")
    user.groups.add(Group.objects.get(name="churn-approvers"))
    admin = world["admin"].user
    churn = RegisteredModel.objects.get(namespace="acme", name="churn")
    prod = DeploymentTarget.objects.get(name="prod")
    accounts.permission_grant(actor=admin, principal=user, perm="registry.view_registeredmodel", obj=churn)
    accounts.permission_grant(actor=admin, principal=user, perm="governance.view_deploymenttarget", obj=prod)
    r = (
        world["admin"]
        .client()
        .put(
            "/api/v1/targets/prod/policy",
            {**POLICY, "approvals_required": 2, "approver_groups": ["reviewers", "churn-approvers"]},
            format="json",
        )
    )
    assert r.status_code == 200, r.json()
    token = accounts.token_create(actor="test", user=user, name="t", scopes=list(scopes.ALL)).plaintext
    return Persona(name="x", user=user, token=token), churn, prod


@pytest.mark.parametrize("loses", ["model", "target"])
def test_an_approval_stops_counting_when_its_approver_loses_view(world, outside_approver, loses):
    x, churn, prod = outside_approver
    perm, obj = (
        ("registry.view_registeredmodel", churn) if loses == "model" else ("governance.view_deploymenttarget", prod)
    )
    pk = promote(world["owner"]).json()["id"]
    assert approve(x, pk).json()["approvals_counted"] == 1
    accounts.permission_revoke(actor=world["admin"].user, principal=x.user, perm=perm, obj=obj, reason="conflict")
    after = approve(world["reviewer"], pk).json()
    assert after["state"] == "pending" and after["approvals_counted"] == 1, after
    assert [(a["user"], a["counts"]) for a in after["approvals"]] == [("x", False), ("reviewer", True)]
    # granted again, it counts again (and the quorum that came back is decided by a counted approver's approve)
    accounts.permission_grant(actor=world["admin"].user, principal=x.user, perm=perm, obj=obj)
    shown = world["auditor"].client().get(f"/api/v1/promotions/{pk}").json()
    assert shown["approvals_counted"] == 2 and shown["state"] == "pending"
    assert approve(world["reviewer"], pk).json()["state"] == "approved"


def test_a_reviewer_without_view_of_the_model_may_not_review(world, outside_approver):
    x, churn, _ = outside_approver
    pk = promote(world["owner"]).json()["id"]
    request = PromotionRequest.objects.select_related("version__model", "target").get(pk=pk)
    rules = selectors.rules_of(selectors.current_policy(target=request.target, model=churn))
    assert selectors.may_review(user=x.user, request=request, rules=rules) == (True, "")
    accounts.permission_revoke(
        actor=world["admin"].user, principal=x.user, perm="registry.view_registeredmodel", obj=churn, reason="r"
    )
    allowed, why = selectors.may_review(user=x.user, request=request, rules=rules)
    assert not allowed and "view" in why, why


# --- 3. The license rule reads the license the README states too ---------------------------------------------


def license_check(personas, metadata: dict):
    admin, owner = personas["admin"].user, personas["owner"].user
    target = builders.target(
        admin, policy={"approvals_required": 1, "approver_groups": ["reviewers"], "allowed_licenses": ["apache-2.0"]}
    )
    card = {**builders.CARD_WITH_TRAINING_DATA, "metadata": metadata}  # governance.license: apache-2.0
    version = builders.version(owner, builders.model(owner), "x", card=card)
    return checks_of(version, target)["license"]


def test_license_rule_fails_when_the_readme_states_another_license(personas):
    check = license_check(personas, {"license": "other", "license_name": "acme-proprietary"})
    assert not check.passed
    assert "apache-2.0" in check.reason and "acme-proprietary" in check.reason, check.reason


def test_license_rule_passes_when_the_readme_names_the_same_license(personas):
    check = license_check(personas, {"license": "Apache-2.0"})  # an SPDX id is not case-sensitive
    assert check.passed, check.reason


def test_license_named_through_other_and_license_name_is_that_license(personas):
    admin, owner = personas["admin"].user, personas["owner"].user
    target = builders.target(
        admin, policy={"approvals_required": 1, "approver_groups": ["reviewers"], "allowed_licenses": ["acme-eula"]}
    )
    card = {
        **builders.CARD_WITH_TRAINING_DATA,
        "governance": {"risk_class": "limited", "license": "acme-eula"},
        "metadata": {"license": "other", "license_name": "acme-eula"},  # how the Hub names a license of its own
    }
    version = builders.version(owner, builders.model(owner), "y", card=card)
    assert checks_of(version, target)["license"].passed


# --- 4. A retried request does not deploy the version again ---------------------------------------------------


def test_a_retried_request_needing_no_approvals_does_not_release_again(world):
    r = world["admin"].client().put("/api/v1/targets/prod/policy", {**POLICY, "approvals_required": 0}, format="json")
    assert r.status_code == 200, r.json()
    first = promote(world["owner"])
    assert first.status_code == 201 and first.json()["state"] == "approved", first.json()
    counts = (PromotionRequest.objects.count(), Release.objects.count(), AuditEvent.objects.count())
    again = promote(world["owner"])  # a CI retry whose first answer was lost
    assert again.status_code == 409, again.json()
    error = again.json()["error"]
    assert error["code"] == "already_desired" and error["detail"]["id"] == first.json()["id"], error
    assert (PromotionRequest.objects.count(), Release.objects.count(), AuditEvent.objects.count()) == counts
    assert Release.objects.get().promotion_id == first.json()["id"]


def test_a_new_host_revision_of_the_desired_version_may_be_requested(world):
    """Tags are editable: the same version with another host revision is something else to deploy."""
    world["admin"].client().put("/api/v1/targets/prod/policy", {**POLICY, "approvals_required": 0}, format="json")
    assert promote(world["owner"]).status_code == 201
    r = world["owner"].client().patch(f"{MODEL}/versions/1", {"tags": {"host_revision": "r2"}}, format="json")
    assert r.status_code == 200, r.json()
    again = promote(world["owner"])
    assert again.status_code == 201 and again.json()["host_revision"] == "r2", again.json()
    assert Release.objects.count() == 2


# --- 5. The same rules again change no policy, with or without If-Match ----------------------------------------


def test_the_same_rules_again_without_if_match_keep_the_approvals(world):
    pk = promote(world["owner"]).json()["id"]
    assert approve(world["reviewer"], pk).json()["approvals_counted"] == 1
    versions, events = Policy.objects.count(), AuditEvent.objects.count()
    same = world["admin"].client().put("/api/v1/targets/prod/policy", POLICY, format="json")
    assert same.status_code == 200 and same.json()["version"] == 1, same.json()
    assert (Policy.objects.count(), AuditEvent.objects.count()) == (versions, events)
    done = approve(world["reviewer2"], pk).json()
    assert done["approvals_counted"] == 2 and done["state"] == "approved", done


def test_a_model_override_with_the_target_rules_is_still_made(world):
    """An override is a policy of its own even with the target's rules: later target changes no longer apply."""
    r = world["admin"].client().put("/api/v1/targets/prod/policies/acme/churn", POLICY, format="json")
    assert r.status_code == 200 and r.json()["model"] == "acme/churn" and r.json()["version"] == 2, r.json()
    again = world["admin"].client().put("/api/v1/targets/prod/policies/acme/churn", POLICY, format="json")
    assert again.json()["version"] == 2
