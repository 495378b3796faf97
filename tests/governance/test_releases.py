"""Approval hands over to deployment: desired state, rollback requests, history. (Host convergence: test_reconcile.)"""

from datetime import timedelta

from django.utils import timezone

from audit.models import AuditEvent
from governance.models import DeploymentTarget, Release, ServingPeriod
from tests.governance.conftest import FULL_CARD, promote, two_serving_releases
from tests.governance.conftest import MODEL as MODEL_PATH
from tests.registry.helpers import register_body, s3_manifest


def approve_all(world, pk):
    for name in ("reviewer", "reviewer2"):
        r = world[name].client().post(f"/api/v1/promotions/{pk}/approve", {}, format="json")
        assert r.status_code == 200, r.json()


def test_approval_sets_desired_release(world):
    pk = promote(world["owner"]).json()["id"]
    approve_all(world, pk)
    target = DeploymentTarget.objects.get(name="prod")
    release = target.desired_release
    assert (release.number, release.state, release.version.number, release.promotion_id) == (1, "pending", 1, pk)
    created = AuditEvent.objects.get(action="release.created")
    assert created.subject_id == str(release.pk)
    body = world["auditor"].client().get("/api/v1/targets/prod/releases").json()["results"]
    assert [(r["number"], r["state"], r["promotion"]) for r in body] == [(1, "pending", pk)]


def test_a_release_a_newer_approval_replaces_records_its_own_event(world):
    """Release 1 never went live; the approval of release 2 supersedes it, and release 1's events say so."""
    import json

    approve_all(world, promote(world["owner"]).json()["id"])
    second = (
        world["owner"]
        .client()
        .post(f"{MODEL_PATH}/versions/", register_body(s3_manifest(b"v2"), metrics={"auc": 0.91}), format="json")
    )
    assert second.status_code == 201, second.json()
    world["owner"].client().post(f"{MODEL_PATH}/versions/2/card", {"content": FULL_CARD}, format="json")
    approve_all(world, promote(world["owner"], version=2).json()["id"])
    first = Release.objects.get(number=1)
    assert first.state == "superseded" and first.ended_at is not None
    event = AuditEvent.objects.get(action="release.superseded")
    assert (event.subject_id, event.actor_username) == (str(first.pk), "reviewer2")
    assert json.loads(event.after) == {"target": "prod", "number": 1, "by": 2}


def test_rollback_needs_an_earlier_release_and_a_reason(world):
    pk = promote(world["owner"]).json()["id"]
    approve_all(world, pk)
    admin = world["admin"].client()
    missing = admin.post("/api/v1/targets/prod/rollback", {}, format="json")
    assert missing.status_code == 400 and "reason" in missing.json()["error"]["message"]
    nothing = admin.post("/api/v1/targets/prod/rollback", {"reason": "errors"}, format="json")
    assert nothing.status_code == 409 and nothing.json()["error"]["code"] == "nothing_to_roll_back_to"


def test_rollback_permission(world):
    for name, code in (("reviewer", 403), ("auditor", 403), ("outsider", 404), ("owner", 403)):
        r = world[name].client().post("/api/v1/targets/prod/rollback", {"reason": "x"}, format="json")
        assert r.status_code == code, (name, r.json())


def test_rollback_to_previous_serving_release(world):
    target = DeploymentTarget.objects.get(name="prod")
    from registry.models import ModelVersion

    v1 = ModelVersion.objects.get(number=1)
    now = timezone.now()
    r1 = Release.objects.create(
        target=target,
        version=v1,
        number=1,
        state="superseded",
        live_at=now - timedelta(hours=2),
        ended_at=now - timedelta(hours=1),
    )
    r2 = Release.objects.create(target=target, version=v1, number=2, state="live", live_at=now - timedelta(hours=1))
    ServingPeriod.objects.create(
        target=target, release=r1, started_at=now - timedelta(hours=2), ended_at=now - timedelta(hours=1)
    )
    ServingPeriod.objects.create(target=target, release=r2, started_at=now - timedelta(hours=1))
    DeploymentTarget.objects.filter(pk=target.pk).update(desired_release=r2, last_good_release=r2)
    r = world["admin"].client().post("/api/v1/targets/prod/rollback", {"reason": "p95 doubled"}, format="json")
    assert r.status_code == 202 and r.json()["number"] == 1 and r.json()["state"] == "pending"
    target.refresh_from_db()
    assert target.desired_release_id == r1.pk
    r2.refresh_from_db()
    assert r2.state == "rolled_back"
    event = AuditEvent.objects.get(action="release.rolled_back")
    assert event.reason == "p95 doubled"
    again = world["admin"].client().post("/api/v1/targets/prod/rollback", {"reason": "x", "release": 1}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_desired"
    # what served at a time in the past
    at = (now - timedelta(minutes=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
    served = world["auditor"].client().get(f"/api/v1/targets/prod/served-at?at={at}").json()
    assert served["release"]["number"] == 1
    before = (now - timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert world["auditor"].client().get(f"/api/v1/targets/prod/served-at?at={before}").json()["release"] is None


def test_ui_rollback_button_uses_the_same_rule_permission_and_audit(world, client):
    target, r1 = two_serving_releases()
    client.force_login(world["reviewer"].user)  # may view the target, may not deploy
    page = client.get("/targets/prod/")
    assert page.status_code == 200 and b"Roll back to release" not in page.content
    refused = client.post("/targets/prod/rollback/", {"reason": "errors"}, follow=True)
    assert b"You may not roll back prod" in refused.content
    target.refresh_from_db()
    assert target.desired_release.number == 2

    client.force_login(world["admin"].user)
    page = client.get("/targets/prod/")
    assert b"Roll back to release 1" in page.content
    no_reason = client.post("/targets/prod/rollback/", {"reason": "  "}, follow=True)
    assert b"A rollback needs a reason." in no_reason.content
    done = client.post("/targets/prod/rollback/", {"reason": "p95 doubled"}, follow=True)
    assert b"Rolling back: release 1" in done.content
    target.refresh_from_db()
    assert target.desired_release_id == r1.pk
    event = AuditEvent.objects.get(action="release.rolled_back")
    assert (event.reason, event.actor_username) == ("p95 doubled", "admin")


def test_ui_rollback_of_a_hidden_target_is_a_404(world, client):
    two_serving_releases()
    client.force_login(world["outsider"].user)
    assert client.post("/targets/prod/rollback/", {"reason": "x"}).status_code == 404


def test_target_endpoints_name_no_model_the_caller_may_not_view(world):
    """A target's viewer who may not view a model it serves learns that a release exists, its number,
    state and times, but not which model, version or digest it is (as in the web UI)."""
    from datetime import UTC

    two_serving_releases()
    Release.objects.update(  # as a self-hosted deploy fills them: they name the model and its digest
        endpoint_url="http://127.0.0.1:8080/v2/models/churn", host_release_id="prod/r2@1234abcd", reason="promotion #7"
    )
    at = timezone.now().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    paths = [
        "/api/v1/targets/",
        "/api/v1/targets/prod",
        "/api/v1/targets/prod/releases",
        f"/api/v1/targets/prod/served-at?at={at}",
    ]

    def releases(persona) -> list[dict]:
        client = world[persona].client()
        assert client.get(f"{MODEL_PATH}").status_code == (404 if persona == "ci_bot" else 200)
        listed = client.get(paths[0]).json()
        found = [t["live_release"] for t in listed if t["name"] == "prod"]
        found.append(client.get(paths[1]).json()["live_release"])
        found += client.get(paths[2]).json()["results"]
        found.append(client.get(paths[3]).json()["release"])
        return found

    hidden = releases("ci_bot")  # may view targets, not acme/churn
    assert len(hidden) == 5 and all(r["model_hidden"] for r in hidden)
    for r in hidden:
        assert (r["model"], r["version"], r["digest"]) == (None, None, None) and r["number"] in (1, 2)
    assert "churn" not in str(hidden) and "1234abcd" not in str(hidden) and "#7" not in str(hidden)
    shown = releases("reviewer")
    assert not any(r["model_hidden"] for r in shown)
    assert {(r["model"], r["version"]) for r in shown} == {("acme/churn", 1)}
    assert all(r["digest"].startswith("sha256:") for r in shown)


def test_a_second_rollback_does_not_undo_the_first(world, client):
    """A double click, two operators, or an API client retrying: the release just rolled back from is not a
    rollback destination, and the button names the release it shows."""
    target, r1 = two_serving_releases()  # release 2 live (bad), release 1 served before
    client.force_login(world["admin"].user)
    page = client.get("/targets/prod/")
    assert b'name="release" value="1"' in page.content
    for _ in range(2):
        client.post("/targets/prod/rollback/", {"reason": "p95 doubled", "release": "1"})
    target.refresh_from_db()
    assert target.desired_release.number == 1
    assert b"already the desired release" in client.get("/targets/prod/").content
    retried = world["admin"].client().post("/api/v1/targets/prod/rollback", {"reason": "p95 doubled"}, format="json")
    assert retried.status_code == 409 and retried.json()["error"]["code"] == "nothing_to_roll_back_to"
    target.refresh_from_db()
    assert target.desired_release.number == 1 and Release.objects.get(number=2).state == "rolled_back"
    assert b"Roll back to release" not in client.get("/targets/prod/").content  # nothing left to offer


def test_a_rollback_never_serves_an_archived_version_again(world):
    from registry.models import ModelVersion

    two_serving_releases()  # release 2 live, release 1 served before; both of version 1
    ModelVersion.objects.filter(number=1).update(status="archived")
    admin = world["admin"].client()
    default = admin.post("/api/v1/targets/prod/rollback", {"reason": "errors"}, format="json")
    assert default.status_code == 409 and default.json()["error"]["code"] == "nothing_to_roll_back_to"
    named = admin.post("/api/v1/targets/prod/rollback", {"reason": "errors", "release": 1}, format="json")
    assert named.status_code == 409 and named.json()["error"]["code"] == "version_archived", named.json()
    assert DeploymentTarget.objects.get(name="prod").desired_release.number == 2


def test_a_canary_never_runs_beside_the_release_rolled_back_from(world):
    """Release 2 is rolled back from and, before that converged, another approval arrives: the host still serves
    release 2, the target's last good release, but the new release deploys whole, not as a canary beside it (a
    failing step would hand release 2 all traffic again)."""
    from governance import deployment
    from governance.hosts.base import HostStatus, Serving

    target, _ = two_serving_releases()
    DeploymentTarget.objects.filter(pk=target.pk).update(rollout={"steps": [10, 100]})
    host_serves_2 = HostStatus(state="ready", serving=(Serving(2, "h2", 100),))
    admin = world["admin"].client()

    def canary_of_a_new_approval():
        approve_all(world, promote(world["owner"]).json()["id"])
        target.refresh_from_db()
        return deployment._canary_plan(target, target.desired_release, host_serves_2)

    beside_live = canary_of_a_new_approval()  # release 3, beside live release 2
    assert beside_live is not None and beside_live.beside.number == 2
    assert admin.post("/api/v1/targets/prod/rollback", {"reason": "abort"}, format="json").json()["number"] == 2
    assert admin.post("/api/v1/targets/prod/rollback", {"reason": "bad"}, format="json").json()["number"] == 1
    assert dict(target.releases.values_list("number", "state")) == {1: "pending", 2: "rolled_back", 3: "rolled_back"}
    assert canary_of_a_new_approval() is None  # release 4


def test_a_rollback_form_read_before_a_newer_approval_rolls_back_nothing(world, client):
    """The form names the release desired when it was read: a release approved since (which its operator never
    saw) is not rolled back by it; the page read again offers the rollback of what serves now."""
    from registry.models import RegisteredModel
    from tests.governance.conftest import FULL_CARD
    from tests.ui import builders

    target, r1 = two_serving_releases()
    client.force_login(world["admin"].user)
    page = client.get("/targets/prod/").content.decode()
    assert 'name="from" value="2"' in page and 'name="release" value="1"' in page
    model = RegisteredModel.objects.get(pk=r1.version.model_id)
    builders.version(world["owner"].user, model, "v-newer", metrics={"auc": 0.95}, card=FULL_CARD)
    approve_all(world, promote(world["owner"], version=model.versions.count()).json()["id"])
    target.refresh_from_db()
    assert target.desired_release.number == 3

    stale = client.post("/targets/prod/rollback/", {"reason": "release 2 is slow", "release": "1", "from": "2"})
    assert stale.status_code == 302
    shown = client.get("/targets/prod/").content.decode()
    assert "prod changed since you read it: release 2 was desired then, release 3 is now." in shown
    target.refresh_from_db()
    assert target.desired_release.number == 3
    assert not AuditEvent.objects.filter(action="release.rolled_back").exists()
    assert 'name="from" value="3"' in shown  # read again: the form is about release 3
    done = client.post("/targets/prod/rollback/", {"reason": "3 is slow", "release": "2", "from": "3"}, follow=True)
    assert b"Rolling back: release 2" in done.content
