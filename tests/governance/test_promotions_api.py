import json
import threading

import pytest
from django.core.management import call_command
from django.db import connection

from audit.models import AuditEvent
from governance.models import Approval, PromotionRequest
from tests.conftest import bearer
from tests.governance.conftest import FULL_CARD, MODEL, POLICY, create_target, promote
from tests.registry.helpers import register_body, s3_manifest


def approve(persona, pk, comment=""):
    return persona.client().post(f"/api/v1/promotions/{pk}/approve", {"comment": comment}, format="json")


def test_target_contract_hides_nothing_secret(world):
    body = world["reviewer"].client().get("/api/v1/targets/prod").json()
    assert body["name"] == "prod" and body["kind"] == "self_hosted" and body["stage"] == "production"
    assert body["policy"]["version"] == 1
    assert body["policy"]["rules"]["approver_groups"] == ["reviewers"]
    assert "traffic_split" in body["capabilities"]


@pytest.mark.parametrize(
    "config, field",
    [
        ({"app_name": "x", "api_token": "secret-value"}, "config.api_token"),
        ({"environment": "main"}, "config.app_name"),
        ({"app_name": 3}, "config.app_name"),
    ],
)
def test_target_config_validated_per_kind(world, config, field):
    r = create_target(world["admin"], name="m", kind="modal", stage="staging", config=config)
    assert r.status_code == 400 and field in r.json()["error"]["message"]


def test_credentials_must_be_a_reference(world):
    r = create_target(
        world["admin"],
        name="rep",
        kind="replicate",
        stage="production",
        credentials_ref="r8_abcdefSECRET",
        config={"owner": "acme", "deployment": "churn", "model": "acme/churn"},
    )
    assert r.status_code == 400 and "credentials_ref" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "name", ["SECRET_KEY", "DATABASE_URL", "METRICS_TOKEN", "CELERY_BROKER_URL", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD"]
)
def test_a_target_cannot_name_the_registrys_own_secrets_as_its_credential(world, name):
    """The worker sends a target's credential to the host the target's config names: naming SECRET_KEY
    there would hand the registry's own secret to whoever created the target."""
    from governance.models import DeploymentTarget

    body = {
        "name": "rep",
        "kind": "replicate",
        "stage": "production",
        "config": {"owner": "acme", "deployment": "churn", "model": "acme/churn"},
    }
    refused = create_target(world["admin"], **body, credentials_ref=f"env:{name}")
    assert refused.status_code == 400, refused.json()
    assert "registry's own configuration" in refused.json()["error"]["message"]
    assert not DeploymentTarget.objects.filter(name="rep").exists()
    ok = create_target(world["admin"], **body, credentials_ref="env:REPLICATE_API_TOKEN")
    assert ok.status_code == 201, ok.json()


@pytest.mark.parametrize(
    ("kind", "first", "clash", "distinct"),
    [
        ("self_hosted", None, {}, {"backend": "staging"}),  # prod (world) has the default backend
        (
            "self_hosted",
            {"backend": "first", "state_dir": "/srv/registry-state"},
            {"backend": "staging", "state_dir": "/srv/registry-state"},
            {"backend": "staging"},
        ),
        (
            "replicate",
            {"owner": "acme", "deployment": "churn", "model": "acme/churn"},
            {"owner": "acme", "deployment": "churn", "model": "acme/churn", "hardware": "gpu-t4"},
            {"owner": "acme", "deployment": "churn-staging", "model": "acme/churn"},
        ),
        (
            "hf_endpoint",
            {"namespace": "acme", "endpoint": "churn", "repository": "acme/churn"},
            {"namespace": "acme", "endpoint": "churn", "repository": "acme/churn-v2"},
            {"namespace": "acme", "endpoint": "churn", "repository": "acme/churn", "base_url": "https://e.example/v2"},
        ),
        # The same resource under another spelling: HAProxy's address forms, URLs with default port, case, slash.
        ("self_hosted", None, {"haproxy_admin": "ipv4@127.0.0.1:9999"}, {"haproxy_admin": "ipv4@127.0.0.1:9998"}),
        ("self_hosted", None, {"haproxy_admin": "localhost:9999"}, {"haproxy_admin": "localhost:9999", "backend": "b"}),
        (
            "self_hosted",
            {"haproxy_admin": "unix@/run/haproxy/admin.sock"},
            {"haproxy_admin": "/run/haproxy/../haproxy/admin.sock"},
            {"haproxy_admin": "/run/haproxy/other.sock"},
        ),
        (
            "replicate",
            {"owner": "acme", "deployment": "churn", "model": "acme/churn"},
            {
                "owner": "acme",
                "deployment": "churn",
                "model": "acme/churn",
                "base_url": "HTTPS://API.Replicate.com:443/",
            },
            {
                "owner": "acme",
                "deployment": "churn",
                "model": "acme/churn",
                "base_url": "https://api.replicate.com:8443",
            },
        ),
        (
            "hf_endpoint",
            {"namespace": "acme", "endpoint": "churn", "repository": "acme/churn", "base_url": "https://e.example/v2"},
            {
                "namespace": "acme",
                "endpoint": "churn",
                "repository": "acme/churn",
                "base_url": "https://E.example:443/v2/",
            },
            {"namespace": "acme", "endpoint": "churn", "repository": "acme/churn", "base_url": "https://e.example/v3"},
        ),
    ],
    ids=[
        "self-hosted-backend",
        "self-hosted-state-dir",
        "replicate",
        "hf",
        "self-hosted-ipv4-prefix",
        "self-hosted-localhost",
        "self-hosted-unix-socket",
        "replicate-url-spelling",
        "hf-url-spelling",
    ],
)
def test_two_targets_cannot_control_one_host_resource(world, kind, first, clash, distinct):
    """A staging target on production's HAProxy backend (or Replicate deployment...) would let a staging
    approval move production traffic: refused, naming the target that holds it."""

    def create(name: str, config: dict):
        return create_target(world["admin"], name=name, kind=kind, stage="staging", config=config, policy=POLICY)

    holder = "prod" if first is None else "first"
    if first is not None:
        assert create("first", first).status_code == 201
    refused = create("staging", clash)
    assert refused.status_code == 409, refused.json()
    error = refused.json()["error"]
    assert error["code"] == "host_resource_in_use" and error["detail"]["target"] == holder
    assert f"Target {holder} already controls" in error["message"]
    assert create("staging", distinct).status_code == 201


def test_a_target_saved_under_an_older_config_check_does_not_block_new_ones(world, tmp_path, caplog):
    """An address the runtime API parser now refuses, stored before it was stricter: comparing it raised, and every
    later self-hosted target's creation was a 500. It is skipped, with a warning naming it."""
    from governance.models import DeploymentTarget

    DeploymentTarget.objects.create(
        name="legacy", kind="self_hosted", stage="staging", config={"haproxy_admin": "abns@admin:1"}
    )
    config = {"haproxy_admin": "127.0.0.1:9998", "state_dir": str(tmp_path / "state")}
    made = create_target(
        world["admin"], name="fresh", kind="self_hosted", stage="staging", config=config, policy=POLICY
    )
    assert made.status_code == 201, made.json()
    assert "target legacy: its config no longer validates" in caplog.text


def test_only_admins_create_targets(world):
    r = create_target(world["owner"], name="x", kind="modal", stage="s", config={"app_name": "a"})
    assert r.status_code == 403


def test_dry_run_and_request_show_the_same_checks(world):
    owner = world["owner"].client()
    dry = owner.post(
        "/api/v1/promotions/dry-run", {"model": "acme/churn", "version": 1, "target": "prod"}, format="json"
    )
    assert dry.status_code == 200, dry.json()
    created = promote(world["owner"])
    assert created.status_code == 201
    body = created.json()
    assert body["state"] == "pending" and body["approvals_required"] == 2
    assert body["checks"] == dry.json()["checks"]
    assert {c["rule"] for c in body["checks"]} == {"version_status", "card_sections", "metric:auc"}
    assert all(c["passed"] for c in body["checks"])
    again = promote(world["owner"])
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_pending"


def test_two_reviewers_approve(world):
    pk = promote(world["owner"]).json()["id"]
    first = approve(world["reviewer"], pk, "looks good")
    assert first.status_code == 200 and first.json()["state"] == "pending"
    assert first.json()["approvals_counted"] == 1
    dup = approve(world["reviewer"], pk)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "already_approved"
    second = approve(world["reviewer2"], pk)
    assert second.status_code == 200 and second.json()["state"] == "approved"
    got = world["auditor"].client().get(f"/api/v1/promotions/{pk}").json()
    assert [(a["user"], a["decision"], a["counts"]) for a in got["approvals"]] == [
        ("reviewer", "approve", True),
        ("reviewer2", "approve", True),
    ]
    late = approve(world["admin"], pk)
    assert late.status_code in (403, 409)


def test_separation_of_duties_even_for_superusers(world):
    from django.contrib.auth.models import Group

    world["admin"].user.groups.add(Group.objects.get(name="reviewers"))
    pk = promote(world["admin"]).json()["id"]
    own = approve(world["admin"], pk)
    assert own.status_code == 403 and "requested this promotion" in own.json()["error"]["message"]


def test_non_approvers_get_403(world):
    pk = promote(world["owner"]).json()["id"]
    r = approve(world["auditor"], pk)  # may see it, may not review it
    assert r.status_code == 403 and "reviewers" in r.json()["error"]["message"]
    for name in ("ci_bot", "outsider"):  # may not even see the model
        assert approve(world[name], pk).status_code == 404


def test_reject_requires_comment_and_is_final(world):
    pk = promote(world["owner"]).json()["id"]
    client = world["reviewer"].client()
    missing = client.post(f"/api/v1/promotions/{pk}/reject", {}, format="json")
    assert missing.status_code == 400 and "comment" in missing.json()["error"]["message"]
    rejected = client.post(f"/api/v1/promotions/{pk}/reject", {"comment": "needs fairness eval"}, format="json")
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    after = approve(world["reviewer2"], pk)
    assert after.status_code == 409 and after.json()["error"]["code"] == "invalid_state"


def test_failing_rule_blocks_approval_until_fixed(world):
    owner = world["owner"].client()
    owner.post(f"{MODEL}/versions/", register_body(s3_manifest(b"v2"), metrics={"auc": 0.92}), format="json")
    pk = promote(world["owner"], version=2).json()["id"]
    blocked = approve(world["reviewer"], pk)
    assert blocked.status_code == 409 and blocked.json()["error"]["code"] == "rules_failing"
    assert "card_sections" in blocked.json()["error"]["message"]
    owner.post(f"{MODEL}/versions/2/card", {"content": FULL_CARD}, format="json")
    assert approve(world["reviewer"], pk).status_code == 200


def test_card_change_invalidates_earlier_approvals(world):
    pk = promote(world["owner"]).json()["id"]
    assert approve(world["reviewer"], pk).json()["approvals_counted"] == 1
    world["owner"].client().post(
        f"{MODEL}/versions/1/card", {"content": {**FULL_CARD, "factors": "age"}}, format="json"
    )
    after = approve(world["reviewer2"], pk).json()
    assert after["state"] == "pending" and after["approvals_counted"] == 1
    assert [a["counts"] for a in after["approvals"]] == [False, True]
    # the first reviewer may approve again, against the new card revision
    final = approve(world["reviewer"], pk).json()
    assert final["state"] == "approved"


def test_policy_change_invalidates_earlier_approvals(world):
    pk = promote(world["owner"]).json()["id"]
    approve(world["reviewer"], pk)
    r = world["admin"].client().put("/api/v1/targets/prod/policy", {**POLICY, "approvals_required": 3}, format="json")
    assert r.status_code == 200 and r.json()["version"] == 2
    after = approve(world["reviewer2"], pk).json()
    assert after["approvals_counted"] == 1 and after["state"] == "pending"


def test_a_model_override_created_while_reviewing_is_a_change(world):
    """Policy versions are numbered per target, overrides included: the override a reviewer did not see is
    not also "version 1" (it was, and a lax override approved on one reviewer's stale word)."""
    pk = promote(world["owner"]).json()["id"]
    seen = {"policy_version": world["reviewer"].client().get(f"/api/v1/promotions/{pk}").json()["policy_version"]}
    lax = {"approvals_required": 1, "approver_groups": ["reviewers"]}
    override = world["admin"].client().put("/api/v1/targets/prod/policies/acme/churn", lax, format="json")
    assert override.status_code == 200 and override.json()["version"] != seen["policy_version"], override.json()
    stale = world["reviewer"].client().post(f"/api/v1/promotions/{pk}/approve", seen, format="json")
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "changed_since_review", stale.json()
    assert PromotionRequest.objects.get(pk=pk).state == "pending" and not Approval.objects.exists()


def test_an_approval_naming_what_was_reviewed_is_refused_when_it_changed(world):
    """digest / card_revision / policy_version in the body pin the decision to what the reviewer saw."""
    from registry.models import ModelVersion

    pk = promote(world["owner"]).json()["id"]
    digest = ModelVersion.objects.get(model__name="churn", number=1).digest
    seen = {"digest": digest, "card_revision": 1, "policy_version": 1}
    reviewer = world["reviewer"].client()
    world["owner"].client().post(
        f"{MODEL}/versions/1/card", {"content": {**FULL_CARD, "factors": "age"}}, format="json"
    )
    stale = reviewer.post(f"/api/v1/promotions/{pk}/approve", {**seen, "comment": "looks fine"}, format="json")
    assert stale.status_code == 409, stale.json()
    error = stale.json()["error"]
    assert error["code"] == "changed_since_review"
    assert error["detail"] == {"card_revision": {"seen": 1, "current": 2}}
    assert not Approval.objects.exists()
    # the same reviewer, having looked at revision 2
    ok = reviewer.post(f"/api/v1/promotions/{pk}/approve", {**seen, "card_revision": 2}, format="json")
    assert ok.status_code == 200 and ok.json()["approvals_counted"] == 1
    # a policy change between looking and rejecting is refused the same way
    world["admin"].client().put("/api/v1/targets/prod/policy", {**POLICY, "request_expiry_hours": 100}, format="json")
    reject = (
        world["reviewer2"]
        .client()
        .post(f"/api/v1/promotions/{pk}/reject", {"comment": "no", "policy_version": 1}, format="json")
    )
    assert reject.status_code == 409 and reject.json()["error"]["detail"] == {
        "policy_version": {"seen": 1, "current": 2}
    }
    assert Approval.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"digest": "md5:abc"}, "digest"),
        ({"card_revision": 0}, "card_revision"),
        ({"policy_version": "x"}, "policy_version"),
    ],
)
def test_malformed_seen_fields_are_400(world, body, field):
    pk = promote(world["owner"]).json()["id"]
    r = world["reviewer"].client().post(f"/api/v1/promotions/{pk}/approve", body, format="json")
    assert r.status_code == 400 and field in r.json()["error"]["detail"]


def test_cancel_by_requester(world):
    pk = promote(world["owner"]).json()["id"]
    assert world["reviewer"].client().post(f"/api/v1/promotions/{pk}/cancel", {}, format="json").status_code == 403
    r = world["owner"].client().post(f"/api/v1/promotions/{pk}/cancel", {"reason": "wrong version"}, format="json")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"


def test_expired_request_cannot_be_approved(world):
    from datetime import timedelta

    from django.utils import timezone

    pk = promote(world["owner"]).json()["id"]
    PromotionRequest.objects.filter(pk=pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    r = approve(world["reviewer"], pk)
    assert r.status_code == 409 and r.json()["error"]["code"] == "expired"
    assert PromotionRequest.objects.get(pk=pk).state == "expired"  # the expiry itself was committed
    assert AuditEvent.objects.filter(action="promotion.expired", subject_id=str(pk)).count() == 1


def overdue(pk: int) -> None:
    from datetime import timedelta

    from django.utils import timezone

    PromotionRequest.objects.filter(pk=pk).update(expires_at=timezone.now() - timedelta(seconds=1))


def test_an_overdue_request_does_not_block_a_new_one(world):
    """Until the periodic expiry ran (every 5 min, or never without beat) a new request was a 409
    already_pending, while the overdue one's page said the requester could open a new one."""
    old = promote(world["owner"]).json()["id"]
    overdue(old)
    r = promote(world["owner"])
    assert r.status_code == 201, r.json()
    assert r.json()["id"] != old and PromotionRequest.objects.get(pk=old).state == "expired"
    assert AuditEvent.objects.filter(action="promotion.expired", subject_id=str(old)).count() == 1


def test_an_overdue_request_is_expired_not_cancelled(world):
    pk = promote(world["owner"]).json()["id"]
    overdue(pk)
    r = world["owner"].client().post(f"/api/v1/promotions/{pk}/cancel", {"reason": "wrong version"}, format="json")
    assert r.status_code == 409 and r.json()["error"]["code"] == "expired"
    assert PromotionRequest.objects.get(pk=pk).state == "expired"  # what happened first is what is recorded
    assert not AuditEvent.objects.filter(action="promotion.cancelled", subject_id=str(pk)).exists()


def test_review_queue(world):
    pk = promote(world["owner"]).json()["id"]
    mine = world["reviewer"].client().get("/api/v1/promotions/?waiting_for_me=true").json()["results"]
    assert [p["id"] for p in mine] == [pk]
    assert world["auditor"].client().get("/api/v1/promotions/?waiting_for_me=true").json()["results"] == []
    assert world["outsider"].client().get("/api/v1/promotions/").json()["results"] == []


def test_a_model_override_decides_who_sees_a_request_in_the_queue(world):
    """The queue follows the policy that governs the request: a model's override, else the target's."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from guardian.shortcuts import assign_perm

    from governance.models import DeploymentTarget
    from registry.models import RegisteredModel

    lead = get_user_model().objects.create_user(username="lead")
    lead.groups.add(Group.objects.create(name="ml-leads"))
    assign_perm("view_deploymenttarget", lead, DeploymentTarget.objects.get(name="prod"))
    assign_perm("view_registeredmodel", lead, RegisteredModel.objects.get(namespace="acme", name="churn"))
    override = {**POLICY, "approvals_required": 1, "approver_groups": ["ml-leads"]}
    put = world["admin"].client().put("/api/v1/targets/prod/policies/acme/churn", override, format="json")
    assert put.status_code == 200, put.json()
    pk = promote(world["owner"]).json()["id"]

    def queue(user):
        client = world["admin"].client()
        client.force_authenticate(user)
        return [p["id"] for p in client.get("/api/v1/promotions/?waiting_for_me=true").json()["results"]]

    assert queue(lead) == [pk]
    assert queue(world["reviewer"].user) == []  # the target's approver group; the override does not name it
    assert approve(world["reviewer"], pk).status_code == 403
    client = world["admin"].client()
    client.force_authenticate(lead)
    assert client.post(f"/api/v1/promotions/{pk}/approve", {}, format="json").json()["state"] == "approved"


def test_the_review_queue_with_hundreds_of_model_overrides(world):
    """Overrides that alternate between naming my group and not: the queue's filter stays flat (it nested one
    level per override and overflowed Python's recursion limit at a few hundred)."""
    from governance.models import DeploymentTarget, Policy
    from registry.models import RegisteredModel

    target = DeploymentTarget.objects.get(name="prod")
    models = RegisteredModel.objects.bulk_create(RegisteredModel(namespace="many", name=f"m{i}") for i in range(600))
    Policy.objects.bulk_create(
        Policy(target=target, model=m, version=1, rules={**POLICY, "approver_groups": ["reviewers" if i % 2 else "x"]})
        for i, m in enumerate(models)
    )
    pk = promote(world["owner"]).json()["id"]
    mine = world["reviewer"].client().get("/api/v1/promotions/?waiting_for_me=true")
    assert mine.status_code == 200 and [p["id"] for p in mine.json()["results"]] == [pk]


def test_an_approval_counts_only_while_its_approver_may_review(world):
    """An approver who leaves the approver group, or is deactivated, no longer makes up the quorum."""
    from django.contrib.auth.models import Group

    reviewers = Group.objects.get(name="reviewers")
    pk = promote(world["owner"]).json()["id"]
    assert approve(world["reviewer"], pk).json()["approvals_counted"] == 1
    world["reviewer"].user.groups.remove(reviewers)
    after = approve(world["reviewer2"], pk).json()
    assert after["state"] == "pending" and after["approvals_counted"] == 1  # 2 required; 1 still counts
    assert [(a["user"], a["counts"]) for a in after["approvals"]] == [("reviewer", False), ("reviewer2", True)]
    world["reviewer"].user.groups.add(reviewers)  # back in the group: the approval counts again
    shown = world["auditor"].client().get(f"/api/v1/promotions/{pk}").json()
    assert shown["approvals_counted"] == 2 and [a["counts"] for a in shown["approvals"]] == [True, True]
    world["reviewer2"].user.is_active = False
    world["reviewer2"].user.save(update_fields=["is_active"])
    shown = world["auditor"].client().get(f"/api/v1/promotions/{pk}").json()
    assert shown["approvals_counted"] == 1 and [a["counts"] for a in shown["approvals"]] == [True, False]
    assert PromotionRequest.objects.get(pk=pk).state == "pending"


def test_a_quorum_that_comes_back_is_decided_by_a_counted_approvers_approve(world):
    """Both reviewers approved, but one was out of the group at the time, so the request stayed pending; back in
    the group, both approvals count and no one else may review: an approve by either of them decides it (it was
    a 409 already_approved for ever, and the request could only expire). No second approval row is written."""
    from django.contrib.auth.models import Group

    reviewers = Group.objects.get(name="reviewers")
    pk = promote(world["owner"]).json()["id"]
    approve(world["reviewer"], pk)
    world["reviewer"].user.groups.remove(reviewers)
    assert approve(world["reviewer2"], pk).json()["state"] == "pending"
    again = approve(world["reviewer2"], pk)  # the quorum is not met: a second approve is still refused
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_approved"
    world["reviewer"].user.groups.add(reviewers)
    decided = approve(world["reviewer2"], pk, comment="quorum is back")
    assert decided.status_code == 200, decided.content
    assert decided.json()["state"] == "approved" and decided.json()["approvals_counted"] == 2
    assert Approval.objects.filter(request_id=pk).count() == 2
    event = AuditEvent.objects.filter(action="promotion.approved", subject_id=str(pk)).get()
    assert event.actor_username == "reviewer2" and event.reason == "quorum is back"
    # the policy version the quorum was reached under: no approval of this decision names it
    assert json.loads(event.after) == {"state": "approved", "approvals": 2, "required": 2, "policy_version": 1}
    closed = approve(world["reviewer"], pk)
    assert closed.status_code == 409 and closed.json()["error"]["code"] == "invalid_state"


def test_approve_scope_required(world, make_token):
    pk = promote(world["owner"]).json()["id"]
    client = bearer(make_token(world["reviewer"].user, ["read", "promotions:write"]))
    r = client.post(f"/api/v1/promotions/{pk}/approve", {}, format="json")
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_approvals(world):
    """5 reviewers x 4 calls each on a 3-approval policy: exactly 3 approvals, approved once, chain intact."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from accounts import services

    world["admin"].client().put("/api/v1/targets/prod/policy", {**POLICY, "approvals_required": 3}, format="json")
    reviewers = Group.objects.get(name="reviewers")
    tokens = []
    for i in range(5):
        user = get_user_model().objects.create_user(username=f"rev{i}")
        user.groups.add(reviewers)
        tokens.append(
            services.token_create(actor="test", user=user, name="t", scopes=["read", "approvals:write"]).plaintext
        )
    pk = promote(world["owner"]).json()["id"]
    barrier = threading.Barrier(20)
    codes = []

    def call(token):
        try:
            barrier.wait()
            codes.append(bearer(token).post(f"/api/v1/promotions/{pk}/approve", {}, format="json").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=call, args=(tokens[i % 5],)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes.count(200) == 3 and codes.count(409) == 17
    assert Approval.objects.filter(request_id=pk).count() == 3
    assert len(set(Approval.objects.filter(request_id=pk).values_list("user_id", flat=True))) == 3
    assert PromotionRequest.objects.get(pk=pk).state == "approved"
    assert AuditEvent.objects.filter(action="promotion.approved", subject_id=str(pk)).count() == 1
    call_command("audit_verify")


def test_signature_rule_reads_the_latest_verdict(world):
    from django.utils import timezone

    from registry.models import ModelVersion, VersionSignature

    world["admin"].client().put("/api/v1/targets/prod/policy", {**POLICY, "require_signature": True}, format="json")

    def dry():
        body = (
            world["owner"]
            .client()
            .post("/api/v1/promotions/dry-run", {"model": "acme/churn", "version": 1, "target": "prod"}, format="json")
            .json()
        )
        return {c["rule"]: c for c in body["checks"]}["signature"]

    assert not dry()["passed"] and "no signature" in dry()["reason"]
    version = ModelVersion.objects.get(number=1)
    VersionSignature.objects.create(
        version=version,
        bundle={},
        bundle_sha256="0" * 64,
        verified=False,
        reason="model-0.bin differs",
        verified_at=timezone.now(),
    )
    assert not dry()["passed"] and "model-0.bin differs" in dry()["reason"]
    VersionSignature.objects.create(
        version=version,
        bundle={},
        bundle_sha256="1" * 64,
        verified=True,
        reason="verified with key abc",
        verified_at=timezone.now(),
    )
    assert dry()["passed"]
