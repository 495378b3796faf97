"""A write that locks a target while another transaction changes the target's desired release.

Under READ COMMITTED, a statement that waits for a row lock rechecks the row it waited for (EvalPlanQual) but keeps
the rows it joined to it as it read them before waiting. Locking the target and reading its desired release in one
statement (a join) returned, after such a wait, the target's new `desired_release_id` beside the old joined row,
which no longer matched: `desired_release` None. A rollback then rolled back "from" nothing and left the release an
approval had just made desired pending for good; a host error failed a release that had gone live meanwhile. Each
test holds the other transaction open until this one waits for the target's lock (pg_stat_activity), then lets it
commit.
"""
# ruff: noqa: F811 - tests take the imported `world` fixture as an argument

import json

import pytest
from django.db import transaction

from audit.models import AuditEvent
from core.errors import Conflict
from governance import deployment
from governance import services as governance
from governance.hosts.base import HostStatus
from governance.models import DeploymentTarget, Release, ServingPeriod
from tests.governance.conftest import promote, reviewer2, two_serving_releases, world  # noqa: F401 - fixtures
from tests.governance.test_lock_order import in_thread, while_held

pytestmark = pytest.mark.django_db(transaction=True)


def one_approval_to_go(world) -> int:
    """A promotion of acme/churn v1 to prod holding one of its two approvals: the next approval is the final one."""
    request_id = promote(world["owner"]).json()["id"]
    governance.promotion_approve(actor=world["reviewer"].user, request_id=request_id)
    return request_id


def test_a_rollback_that_waited_for_a_final_approval_rolls_back_the_release_it_made_desired(world):
    target, _ = two_serving_releases()  # release 2 live and desired, release 1 served before it
    request_id = one_approval_to_go(world)

    outcome = while_held(
        lambda: governance.promotion_approve(actor=world["reviewer2"].user, request_id=request_id).state,
        lambda: deployment.deployment_rollback(actor=world["admin"].user, target=target, reason="bad").number,
    )

    assert outcome == {"held": "approved", "waiter": 2}, outcome
    target.refresh_from_db()
    release3 = Release.objects.get(target=target, number=3)
    # As if the two had run one after the other: release 3 is what the rollback rolled back from, not left pending
    # (and never retired) behind a desired release 2.
    assert (release3.state, target.desired_release.number) == ("rolled_back", 2)
    event = AuditEvent.objects.get(action="release.rolled_back")
    assert json.loads(event.after)["from"] == 3


def test_a_rollback_decided_on_an_older_page_names_the_release_desired_now(world):
    target, _ = two_serving_releases()
    request_id = one_approval_to_go(world)

    def rollback_from_2():  # the rollback form showed release 2 as desired
        try:
            deployment.deployment_rollback(actor=world["admin"].user, target=target, reason="bad", from_number=2)
        except Conflict as exc:
            return (exc.code, exc.message)
        return "rolled back"

    outcome = while_held(
        lambda: governance.promotion_approve(actor=world["reviewer2"].user, request_id=request_id).state,
        rollback_from_2,
    )

    code, message = outcome["waiter"]
    assert code == "changed_since_review"
    assert "release 2 was desired then, release 3 is now" in message, message
    target.refresh_from_db()
    assert (target.desired_release.number, target.desired_release.state) == (3, "pending")
    assert not AuditEvent.objects.filter(action="release.rolled_back").exists()


def test_a_host_error_that_waited_for_its_release_to_go_live_fails_nothing(world):
    """Worker A's last retry of a host error for release 3 fails it (release_fail) while worker B's reconcile, which
    found the host serving release 3, marks it live: whichever commits first, a live release is not failed."""
    target, _ = two_serving_releases()
    request_id = one_approval_to_go(world)
    governance.promotion_approve(actor=world["reviewer2"].user, request_id=request_id)
    target.refresh_from_db()
    release3 = target.desired_release
    assert deployment._mark_deploying(target.pk, release3.pk)

    def goes_live():
        deployment._record_live(target.pk, release3.pk, HostStatus(state="ready"), "h3")
        return "live"

    def fails():
        deployment.release_fail(target_id=target.pk, release_id=release3.pk, reason="host said 503")
        return "returned"

    assert while_held(goes_live, fails) == {"held": "live", "waiter": "returned"}

    release3.refresh_from_db()
    target = DeploymentTarget.objects.get(pk=target.pk)
    assert release3.state == "live"
    assert (target.desired_release_id, target.last_good_release_id) == (release3.pk, release3.pk)
    serving = ServingPeriod.objects.filter(target=target, ended_at__isnull=True)
    assert list(serving.values_list("release__number", flat=True)) == [3]
    assert not AuditEvent.objects.filter(action="release.failed").exists()


def test_the_desired_release_is_locked_with_its_target(world):
    """_lock_target's callers change the desired release's row too: it is locked with the target (target first),
    the other releases are not."""
    target, _ = two_serving_releases()  # release 2 desired

    def lock_now(number):
        def work():
            with transaction.atomic():
                rows = Release.objects.select_for_update(no_key=True, nowait=True).filter(target=target, number=number)
                return len(list(rows))

        return work

    outcome = {}
    with transaction.atomic():
        deployment._lock_target(target.pk)
        for number in (1, 2):
            in_thread(outcome, number, lock_now(number)).join(20)
    assert outcome[1] == 1
    assert "could not obtain lock" in str(outcome[2]), outcome
