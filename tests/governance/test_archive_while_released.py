"""Archived is final: a version is not archived while a release of it serves or is on its way, and an approval that
waited for an archive does not start a release of the archived version."""

import threading

import pytest

from audit.models import AuditEvent
from governance import deployment
from governance import services as governance
from governance.models import DeploymentTarget, PromotionRequest, Release
from registry import services as registry
from registry.models import ModelVersion
from tests.governance.conftest import MODEL, promote
from tests.governance.test_lock_order import comes_to_wait_on_a_lock, in_thread


def approve_all(world, pk):
    for name in ("reviewer", "reviewer2"):
        r = world[name].client().post(f"/api/v1/promotions/{pk}/approve", {}, format="json")
        assert r.status_code == 200, r.json()


def archive(persona):
    return persona.client().patch(f"{MODEL}/versions/1", {"status": "archived"}, format="json")


def test_a_version_whose_release_is_on_its_way_or_serving_is_not_archived(world):
    approve_all(world, promote(world["owner"]).json()["id"])
    refused = archive(world["owner"])
    assert refused.status_code == 409, refused.json()
    error = refused.json()["error"]
    assert error["code"] == "version_in_use"
    assert "release 1 on prod (pending)" in error["message"] and "Roll the target back" in error["message"]
    assert error["detail"] == {"releases": [{"target": "prod", "number": 1, "state": "pending"}]}
    Release.objects.filter(number=1).update(state="live")
    assert "release 1 on prod (live)" in archive(world["owner"]).json()["error"]["message"]
    assert ModelVersion.objects.get(number=1).status == "registered"
    assert not AuditEvent.objects.filter(action="version.updated").exists()

    release = Release.objects.get(number=1)
    Release.objects.filter(pk=release.pk).update(state="deploying")
    deployment.release_fail(target_id=release.target_id, release_id=release.pk, reason="bad weights")
    assert archive(world["owner"]).status_code == 200  # nothing of it serves or is on its way now


def test_the_refusal_names_only_targets_the_archiver_may_view(world):
    approve_all(world, promote(world["owner"]).json()["id"])
    hidden = DeploymentTarget.objects.create(name="secret-prod", kind="self_hosted", stage="production")
    Release.objects.create(target=hidden, version=ModelVersion.objects.get(number=1), number=1, state="live")
    admin = archive(world["admin"]).json()["error"]
    assert "release 1 on prod (pending), release 1 on secret-prod (live)" in admin["message"]
    assert len(admin["detail"]["releases"]) == 2
    world["owner"].user.groups.clear()  # still the model's owner, no longer a viewer of every target
    owner = archive(world["owner"]).json()["error"]
    assert "it serves or is being deployed: 2 on targets you may not view." in owner["message"]
    assert "prod" not in owner["message"] and owner["detail"] == {"releases": []}


def while_an_archive_holds_its_locks(archiver, version, work) -> dict:
    """Archive `version` in one thread and, while the archive holds its locks (after governance's check, before it
    commits), run `work` in another, which must come to wait for a lock. Returns the outcomes by "archive" and
    "work" (a result, or the exception's repr)."""
    holding, released, outcome, pids = threading.Event(), threading.Event(), {}, []

    def hold_the_archive_open(*, actor, version):  # registered after governance's check, so it runs after it
        holding.set()
        released.wait(10)

    def waiting_work():
        from django.db import connection

        pids.append(connection.cursor().connection.info.backend_pid)
        return work()

    registry.register_archive_check(hold_the_archive_open)
    try:
        archiving = in_thread(
            outcome,
            "archive",
            lambda: registry.version_update(actor=archiver, version=version, status="archived").status,
        )
        assert holding.wait(10)
        waiting = in_thread(outcome, "work", waiting_work)
        assert comes_to_wait_on_a_lock(pids), "it should wait for the archive"
        released.set()
        archiving.join(20)
        waiting.join(20)
    finally:
        registry._ARCHIVE_CHECKS.remove(hold_the_archive_open)
        released.set()
    return outcome


@pytest.mark.django_db(transaction=True)
def test_an_approval_that_waited_for_an_archive_starts_no_release(world):
    """The archive locks the version's pending requests, so the final approval waits for it to commit, and then
    finds the version archived: nothing of the approval is recorded, no release starts."""
    request_id = promote(world["owner"]).json()["id"]
    governance.promotion_approve(actor=world["reviewer"].user, request_id=request_id)  # 1 of 2
    outcome = while_an_archive_holds_its_locks(
        world["owner"].user,
        ModelVersion.objects.get(number=1),
        lambda: governance.promotion_approve(actor=world["reviewer2"].user, request_id=request_id).state,
    )
    assert outcome["archive"] == "archived"
    assert "archived" in outcome["work"], outcome
    assert not Release.objects.exists()
    request = PromotionRequest.objects.get(pk=request_id)
    assert request.state == "pending" and request.approvals.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_rollback_that_waited_for_an_archive_does_not_serve_the_archived_version(world):
    """Release 2 (v2) serves, release 1 (v1) served before it. The archive of v1 locks the targets v1 has releases
    on, so a rollback to release 1 waits for it to commit, then finds v1 archived: 409, nothing changes."""
    from datetime import timedelta

    from django.utils import timezone

    from governance.models import ServingPeriod
    from tests.governance.conftest import register_second_version

    register_second_version(world)
    target = DeploymentTarget.objects.get(name="prod")
    v1, v2 = ModelVersion.objects.get(number=1), ModelVersion.objects.get(number=2)
    now = timezone.now()
    r1 = Release.objects.create(target=target, version=v1, number=1, state="superseded", live_at=now - timedelta(2))
    r2 = Release.objects.create(target=target, version=v2, number=2, state="live", live_at=now - timedelta(1))
    ServingPeriod.objects.create(target=target, release=r1, started_at=r1.live_at, ended_at=r2.live_at)
    ServingPeriod.objects.create(target=target, release=r2, started_at=r2.live_at)
    DeploymentTarget.objects.filter(pk=target.pk).update(desired_release=r2, last_good_release=r2)
    outcome = while_an_archive_holds_its_locks(
        world["owner"].user,
        v1,
        lambda: (
            deployment.deployment_rollback(actor=world["admin"].user, target=target, reason="x", to_number=1).number
        ),
    )
    assert outcome["archive"] == "archived"
    assert "archived" in outcome["work"], outcome
    target.refresh_from_db()
    assert target.desired_release == r2 and dict(target.releases.values_list("number", "state")) == {
        1: "superseded",
        2: "live",
    }
