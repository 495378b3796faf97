"""Governance's sections of the lineage trail (promotions, approvals, releases, rollbacks) and the
trail of a target's release, checked field by field for a seeded scenario, against the audit chain."""

import hashlib
import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from guardian.shortcuts import assign_perm

from audit import chain
from audit.models import AuditEvent
from governance import deployment
from governance import services as governance
from governance.hosts.base import HostStatus
from governance.models import DeploymentTarget, Policy, PromotionRequest, Release, ServingPeriod
from registry import services as registry_services
from tests.conftest import bearer
from tests.lineage.conftest import BASE_CARD, make_version, scenario  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db

TRAIL = "/api/v1/lineage/trail"
RULES = {
    "approvals_required": 2,
    "approver_groups": ["reviewers"],
    "requester_can_approve": False,
    "required_card_sections": ["training_data"],
    "require_lineage": True,
}


def t(value) -> str:
    return value.isoformat().replace("+00:00", "Z")


def go_live(release: Release, host_id: str) -> Release:
    """What the reconciler does when the host reports the release serving all traffic."""
    deployment._mark_live(
        release.target_id, release.pk, HostStatus(state="ready", endpoint_url="http://127.0.0.1:9/prod"), host_id
    )
    release.refresh_from_db()
    return release


def seq_of(action: str, subject) -> AuditEvent:
    return AuditEvent.objects.get(action=action, subject_type=subject._meta.label_lower, subject_id=str(subject.pk))


@pytest.fixture
def released(personas, scenario, make_version):  # noqa: F811 - the imported fixture
    """prod (RULES): churn v1 approved by reviewer + reviewer2 -> release 1, live; churn v2 (same training
    run) rejected once, requested again and approved -> release 2, live; then rolled back to release 1,
    which serves again."""
    from tests.ui.builders import reviewer

    admin, owner = personas["admin"].user, personas["owner"].user
    rev1, rev2 = personas["reviewer"].user, reviewer("reviewer2")
    prod = governance.target_create(
        actor=admin, name="prod", kind="self_hosted", stage="production", config={}, policy=RULES
    )
    v1 = scenario["churn"]
    p1 = governance.promotion_request(actor=owner, version=v1, target=prod, reason="first churn model")
    governance.promotion_approve(actor=rev1, request_id=p1.pk, comment="lineage and card look right")
    governance.promotion_approve(actor=rev2, request_id=p1.pk)
    r1 = go_live(Release.objects.get(target=prod, number=1), "h-1")

    v2 = make_version("churn", run_id=scenario["runs"]["C"])
    registry_services.card_revision_add(actor=owner, version=v2, content=BASE_CARD)
    p2 = governance.promotion_request(actor=owner, version=v2, target=prod)
    governance.promotion_reject(actor=rev2, request_id=p2.pk, comment="say why v2 is better")
    p3 = governance.promotion_request(actor=owner, version=v2, target=prod, reason="v2: retrained, lower loss")
    governance.promotion_approve(actor=rev1, request_id=p3.pk)
    governance.promotion_approve(actor=rev2, request_id=p3.pk, comment="ok")
    r2 = go_live(Release.objects.get(target=prod, number=2), "h-2")
    between = r2.live_at
    deployment.deployment_rollback(actor=admin, target=prod, reason="p95 latency doubled")
    r1 = go_live(Release.objects.get(pk=r1.pk), "h-1")
    r2.refresh_from_db()
    return {
        **scenario,
        "prod": prod,
        "v1": v1,
        "v2": v2,
        "p1": p1,
        "p2": p2,
        "p3": p3,
        "r1": r1,
        "r2": r2,
        "between": between,
        "reviewer2": rev2,
    }


def get(client, node_id, **params) -> dict:
    response = client.get(TRAIL, {"nodeId": node_id, **params})
    assert response.status_code == 200, response.content
    return response.json()


def test_promotions_section_field_by_field(personas, released):
    s = released
    trail = get(personas["auditor"].client(), "model:acme/churn:1")["trail"]
    promotions = trail["sections"]["promotions"]
    p1 = PromotionRequest.objects.get(pk=s["p1"].pk)
    requested = seq_of("promotion.requested", p1)
    approved = AuditEvent.objects.get(action="promotion.approved", subject_id=str(p1.pk))
    approvals = list(p1.approvals.order_by("created_at", "id"))
    policy = Policy.objects.get(target=s["prod"], version=1)
    assert promotions["requests"] == [
        {
            "id": p1.pk,
            "target": "prod",
            "state": "approved",
            "requested_at": t(p1.created_at),
            "requested_by": "owner",
            "reason": "first churn model",
            "expires_at": t(p1.expires_at),
            "decided_at": t(p1.decided_at),
            "decided_by": "reviewer2",
            "policy_at_request": {"version": 1, "failing_rules": []},
            "approvals": [
                {
                    "user": "reviewer",
                    "decision": "approve",
                    "comment": "lineage and card look right",
                    "at": t(approvals[0].created_at),
                    "digest": s["v1"].digest,
                    "digest_matches_version": True,
                    "card_revision": 1,
                    "policy_version": 1,
                },
                {
                    "user": "reviewer2",
                    "decision": "approve",
                    "comment": "",
                    "at": t(approvals[1].created_at),
                    "digest": s["v1"].digest,
                    "digest_matches_version": True,
                    "card_revision": 1,
                    "policy_version": 1,
                },
            ],
            "events": [
                {"seq": e.seq, "at": t(e.at), "action": e.action, "actor": e.actor_username, "reason": e.reason}
                for e in AuditEvent.objects.filter(
                    subject_type="governance.promotionrequest", subject_id=str(p1.pk)
                ).order_by("seq")
            ],
        }
    ]
    actions = [e["action"] for e in promotions["requests"][0]["events"]]
    assert actions == ["promotion.requested", "promotion.approval", "promotion.approval", "promotion.approved"]
    assert promotions["requests"][0]["events"][0]["seq"] == requested.seq
    assert promotions["requests"][0]["events"][-1]["seq"] == approved.seq
    created = AuditEvent.objects.get(action="target.created", subject_id=str(s["prod"].pk))
    assert promotions["policies"] == [
        {
            "target": "prod",
            "model": None,
            "version": 1,
            "rules": policy.rules,
            "created_at": t(policy.created_at),
            "audit_seq": created.seq,
        }
    ]
    (check,) = promotions["checks"]
    assert (check["target"], check["policy_version"]) == ("prod", 1)
    results = {r["rule"]: (r["passed"], r["reason"]) for r in check["results"]}
    assert results["card_sections"][0] is True
    # require_lineage passes on real lineage: the raw events digest upstream, the training run's commit
    assert results["lineage"] == (True, "lineage names 1 dataset version(s) with digests and commit def456.")

    v2 = get(personas["auditor"].client(), "model:acme/churn:2")["trail"]["sections"]["promotions"]
    rejected, again = v2["requests"]
    assert (rejected["id"], rejected["state"], rejected["decided_by"]) == (s["p2"].pk, "rejected", "reviewer2")
    assert rejected["approvals"] == [
        {
            "user": "reviewer2",
            "decision": "reject",
            "comment": "say why v2 is better",
            "at": rejected["approvals"][0]["at"],
            "digest": s["v2"].digest,
            "digest_matches_version": True,
            "card_revision": 1,
            "policy_version": 1,
        }
    ]
    assert (again["id"], again["state"], again["reason"]) == (s["p3"].pk, "approved", "v2: retrained, lower loss")
    assert [(a["user"], a["decision"], a["comment"]) for a in again["approvals"]] == [
        ("reviewer", "approve", ""),
        ("reviewer2", "approve", "ok"),
    ]


def test_releases_section_field_by_field(personas, released):
    s = released
    r1, r2 = s["r1"], s["r2"]
    rollback = AuditEvent.objects.get(action="release.rolled_back")
    trail = get(personas["auditor"].client(), "model:acme/churn:1")["trail"]
    periods = list(ServingPeriod.objects.filter(release=r1).order_by("started_at"))
    assert len(periods) == 2 and periods[0].ended_at is not None and periods[1].ended_at is None
    expected_rollback = {
        "seq": rollback.seq,
        "at": t(rollback.at),
        "actor": "admin",
        "reason": "p95 latency doubled",
        "from": "release:prod:2",
        "to": "release:prod:1",
    }
    assert trail["sections"]["releases"] == [
        {
            "target": "prod",
            "stage": "production",
            "kind": "self_hosted",
            "releases": [
                {
                    "id": "release:prod:1",
                    "number": 1,
                    "state": "live",
                    "traffic_percent": 100,
                    "promotion": s["p1"].pk,
                    "reason": f"promotion #{s['p1'].pk}",
                    "created_at": t(r1.created_at),
                    "created_by": "reviewer2",
                    "live_at": t(r1.live_at),
                    "ended_at": None,
                    "endpoint_url": "http://127.0.0.1:9/prod",
                    "served": [
                        {"started_at": t(periods[0].started_at), "ended_at": t(periods[0].ended_at)},
                        {"started_at": t(periods[1].started_at), "ended_at": None},
                    ],
                    "events": [
                        {"seq": e.seq, "at": t(e.at), "action": e.action, "actor": e.actor_username, "reason": ""}
                        for e in AuditEvent.objects.filter(
                            subject_type="governance.release", subject_id=str(r1.pk)
                        ).order_by("seq")
                    ],
                }
            ],
            "rollbacks": [expected_rollback],
        }
    ]
    events = trail["sections"]["releases"][0]["releases"][0]["events"]
    assert [e["action"] for e in events] == ["release.created", "release.live", "release.superseded", "release.live"]
    assert [e["actor"] for e in events] == ["reviewer2", *["system:reconciler"] * 3]
    superseded = AuditEvent.objects.get(action="release.superseded", subject_id=str(r1.pk))
    assert json.loads(superseded.after) == {"target": "prod", "number": 1, "by": 2}  # release 2 went live

    (v2_target,) = get(personas["auditor"].client(), "model:acme/churn:2")["trail"]["sections"]["releases"]
    (release2,) = v2_target["releases"]
    assert (release2["id"], release2["state"], release2["ended_at"]) == (
        "release:prod:2",
        "rolled_back",
        t(r2.ended_at),
    )
    assert release2["served"] == [
        {"started_at": t(r2.live_at), "ended_at": t(periods[1].started_at)}  # until release 1 served again
    ]
    assert v2_target["rollbacks"] == [expected_rollback]


def test_audit_range_covers_governance_facts_and_checks_against_the_chain(personas, released):
    s = released
    body = get(personas["auditor"].client(), "model:acme/churn:1")
    audit = body["trail"]["audit"]
    listed = {e["seq"]: e for e in audit["events"]}
    # every request, release and rollback event of the version, and the policy it was approved under
    expected = set(
        AuditEvent.objects.filter(subject_type="governance.promotionrequest", subject_id=str(s["p1"].pk)).values_list(
            "seq", flat=True
        )
    )
    expected |= set(
        AuditEvent.objects.filter(subject_type="governance.release", subject_id=str(s["r1"].pk)).values_list(
            "seq", flat=True
        )
    )
    expected |= {AuditEvent.objects.get(action="release.rolled_back").seq}
    expected |= {AuditEvent.objects.get(action="target.created").seq}
    assert expected <= set(listed)
    # nothing about v2's requests or release 2's own events
    v2_only = set(
        AuditEvent.objects.filter(
            subject_type="governance.promotionrequest", subject_id__in=[str(s["p2"].pk), str(s["p3"].pk)]
        ).values_list("seq", flat=True)
    ) | set(
        AuditEvent.objects.filter(subject_type="governance.release", subject_id=str(s["r2"].pk)).values_list(
            "seq", flat=True
        )
    )
    assert not v2_only & set(listed)
    assert audit["first_seq"] == min(listed) and audit["last_seq"] == max(listed)
    head = AuditEvent.objects.exclude(action="lineage.trail_issued").order_by("-seq").first()
    assert audit["chain_head"] == {"seq": head.seq, "hash": head.hash}
    assert audit["last_seq"] == head.seq  # release 1 serving again is the newest fact

    exported = b"".join(
        personas["auditor"].client().get("/api/v1/audit/events", {"format": "ndjson"}).streaming_content
    )
    events = [json.loads(line) for line in exported.splitlines()]
    chain.verify_events(events)
    by_seq = {e["seq"]: e for e in events}
    for seq, event in listed.items():
        assert (by_seq[seq]["hash"], by_seq[seq]["action"]) == (event["hash"], event["action"])
    # the sha256 the export states is the sha256 of the trail's canonical JSON
    assert body["sha256"] == hashlib.sha256(chain.canonical_json(body["trail"])).hexdigest()


def test_as_of_replays_states_from_the_audit_events(personas, released):
    s = released
    # release 2 live, just before the rollback
    at = AuditEvent.objects.get(action="release.rolled_back").at - timedelta(microseconds=1)
    v1 = get(personas["auditor"].client(), "model:acme/churn:1", as_of=at.isoformat())["trail"]
    (prod,) = v1["sections"]["releases"]
    (release1,) = prod["releases"]
    first_period = ServingPeriod.objects.filter(release=s["r1"]).order_by("started_at").first()
    assert (release1["state"], release1["ended_at"]) == ("superseded", t(first_period.ended_at))
    assert release1["served"] == [{"started_at": t(first_period.started_at), "ended_at": t(first_period.ended_at)}]
    assert prod["rollbacks"] == []
    assert [e["action"] for e in release1["events"]] == ["release.created", "release.live", "release.superseded"]
    assert v1["sections"]["promotions"]["checks"] is None  # no check "now" in a trail of the past
    assert AuditEvent.objects.get(action="release.rolled_back").seq not in {e["seq"] for e in v1["audit"]["events"]}

    v2 = get(personas["auditor"].client(), "model:acme/churn:2", as_of=at.isoformat())["trail"]
    (release2,) = v2["sections"]["releases"][0]["releases"]
    assert (release2["state"], release2["ended_at"], release2["live_at"]) == ("live", None, t(s["between"]))
    requests = {r["id"]: r for r in v2["sections"]["promotions"]["requests"]}
    assert requests[s["p3"].pk]["state"] == "approved"

    # before release 2 was approved, the second request was pending and had one approval
    p3 = PromotionRequest.objects.get(pk=s["p3"].pk)
    first = p3.approvals.order_by("created_at").first()
    early = get(personas["auditor"].client(), "model:acme/churn:2", as_of=first.created_at.isoformat())["trail"]
    pending = {r["id"]: r for r in early["sections"]["promotions"]["requests"]}[p3.pk]
    assert (pending["state"], pending["decided_at"], len(pending["approvals"])) == ("pending", None, 1)
    assert early["sections"]["releases"] == []


def test_as_of_an_abort_the_release_still_serving_stays_live(personas, released):
    """A rollback while release 3 is on its way returns to release 1, which serves throughout: as of then (and
    now) release 1 is live, its serving period unbroken."""
    s = released
    p4 = governance.promotion_request(actor=personas["owner"].user, version=s["v2"], target=s["prod"])
    for reviewer in (personas["reviewer"].user, s["reviewer2"]):
        governance.promotion_approve(actor=reviewer, request_id=p4.pk)
    deployment.deployment_rollback(actor=personas["admin"].user, target=s["prod"], reason="not now")
    aborted = AuditEvent.objects.filter(action="release.rolled_back").latest("seq")
    assert json.loads(aborted.after)["from"] == 3 and json.loads(aborted.after)["to"] == 1
    for as_of in ({"as_of": aborted.at.isoformat()}, {}):
        trail = get(personas["auditor"].client(), "model:acme/churn:1", **as_of)["trail"]
        (release1,) = trail["sections"]["releases"][0]["releases"]
        assert (release1["state"], release1["ended_at"], release1["live_at"]) == ("live", None, t(s["r1"].live_at))
        assert release1["served"][-1]["ended_at"] is None


def test_trail_of_a_release(personas, released):
    s = released
    body = get(personas["auditor"].client(), "release:prod:2")
    trail = body["trail"]
    assert trail["subject"] == {"id": "release:prod:2", "type": "release"}
    assert trail["version"]["id"] == "model:acme/churn:2"
    release = trail["release"]
    assert (release["id"], release["target"], release["stage"], release["version"]) == (
        "release:prod:2",
        "prod",
        "production",
        "model:acme/churn:2",
    )
    assert (release["state"], release["promotion"], release["created_by"]) == ("rolled_back", s["p3"].pk, "reviewer2")
    assert [(r["from"], r["to"], r["reason"]) for r in release["rollbacks"]] == [
        ("release:prod:2", "release:prod:1", "p95 latency doubled")
    ]
    assert trail["produced_by"] == [f"run:{s['runs']['C']}"]  # the lineage part: the released version's
    assert {e["seq"] for e in release["events"]} <= {e["seq"] for e in trail["audit"]["events"]}

    html = personas["auditor"].client().get(TRAIL, {"nodeId": "release:prod:2", "format": "html"})
    assert html.status_code == 200
    text = html.content.decode()
    assert html["X-Trail-SHA256"] in text and "release:prod:2" in text and "p95 latency doubled" in text
    assert f"Request #{s['p2'].pk} to prod: rejected" in text and "say why v2 is better" in text
    assert "Rollback (audit #" in text and "release:prod:2 → release:prod:1" in text


def test_sections_leave_out_targets_the_reader_may_not_view(personas, released, make_token):
    user = get_user_model().objects.create_user(username="analyst")
    assign_perm("registry.view_registeredmodel", user, released["v1"].model)
    client = bearer(make_token(user, ["read", "audit:read"]))
    trail = get(client, "model:acme/churn:1")["trail"]
    assert trail["sections"] == {"promotions": {"requests": [], "policies": [], "checks": []}, "releases": []}
    prod = str(DeploymentTarget.objects.get(name="prod").pk)
    assert not [e for e in trail["audit"]["events"] if e["subject_type"].startswith("governance.")]
    # ids are per table: a model or version may share the target's number, so compare type and id
    assert all(
        (e["subject_type"], e["subject_id"]) != ("governance.deploymenttarget", prod) for e in trail["audit"]["events"]
    )
    assert client.get(TRAIL, {"nodeId": "release:prod:1"}).status_code == 404
    assert personas["outsider"].client().get(TRAIL, {"nodeId": "release:prod:1"}).status_code == 404
    assert personas["auditor"].client().get(TRAIL, {"nodeId": "release:prod:9"}).status_code == 404
    bad = personas["auditor"].client().get(TRAIL, {"nodeId": "release:prod"})
    assert bad.status_code == 400
