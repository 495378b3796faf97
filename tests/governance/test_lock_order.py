"""Lock order: promotion -> target -> release -> audit chain head, the head always last.

A final approval starts a release on its target. If it appended its audit events (taking the chain
head) before locking the target, a reconcile that holds the target and then appends its own event
would wait for the head while the approval waits for the target: a deadlock, which PostgreSQL breaks
by failing one of them (a 500 for the reviewer, or a failed task)."""

import threading
import time

import pytest
from django.db import connection, connections, transaction

from audit.services import record
from governance import deployment
from governance import services as governance
from governance.models import DeploymentTarget, PromotionRequest, Release
from tests.governance.conftest import POLICY, promote

pytestmark = pytest.mark.django_db(transaction=True)


def waiting_on_a_lock(pid: int) -> bool:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return bool(row) and row[0] == "Lock"


def comes_to_wait_on_a_lock(pids: list[int], seconds: float = 10) -> bool:
    """Whether the connection whose backend pid lands in `pids` (from its thread) waits for a row lock in time."""
    deadline = time.monotonic() + seconds
    while not (pids and waiting_on_a_lock(pids[0])) and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(pids) and waiting_on_a_lock(pids[0])


def in_thread(outcome: dict, key: str, work) -> threading.Thread:
    """Run `work()` on its own connection; its result (or the exception's repr) lands in outcome[key]."""

    def run():
        try:
            outcome[key] = work()
        except Exception as exc:  # noqa: BLE001 - the outcome is the assertion
            outcome[key] = repr(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def while_held(work_in_transaction, waiter) -> dict:
    """Run `work_in_transaction` in a transaction held open until `waiter`, on its own connection, waits for a row
    lock; then commit it and let `waiter` go on. Returns both outcomes ("held", "waiter")."""
    holding, go, outcome, pids = threading.Event(), threading.Event(), {}, []

    def held():
        with transaction.atomic():
            result = work_in_transaction()
            holding.set()
            go.wait(20)
        return result

    def waiting():
        pids.append(connection.cursor().connection.info.backend_pid)
        return waiter()

    first = in_thread(outcome, "held", held)
    assert holding.wait(20), outcome
    second = in_thread(outcome, "waiter", waiting)
    try:
        assert comes_to_wait_on_a_lock(pids), "the second transaction never waited for the first's lock"
    finally:
        go.set()
        first.join(20)
        second.join(20)
    return outcome


def reconcile_like(target, holding: threading.Event, released: threading.Event) -> str:
    """What the reconciler does: lock the target, work, append an audit event, commit."""
    with transaction.atomic():
        deployment._lock_target(target.pk)
        holding.set()
        released.wait(10)
        record(action="release.started", subject=target, actor="system:reconciler")
    return "ok"


def test_a_final_approval_and_a_reconcile_of_its_target_do_not_deadlock(world):
    reviewer, reviewer2 = world["reviewer"].user, world["reviewer2"].user
    created = promote(world["owner"])
    assert created.status_code == 201, created.json()
    request_id = created.json()["id"]
    governance.promotion_approve(actor=reviewer, request_id=request_id)  # 1 of 2
    target = DeploymentTarget.objects.get(name="prod")

    holding, released, outcome = threading.Event(), threading.Event(), {}
    approver_pid = []

    def final_approval():
        approver_pid.append(connection.cursor().connection.info.backend_pid)
        governance.promotion_approve(actor=reviewer2, request_id=request_id)
        return "ok"

    reconciler = in_thread(outcome, "reconcile", lambda: reconcile_like(target, holding, released))
    assert holding.wait(10)
    approver = in_thread(outcome, "approval", final_approval)
    assert comes_to_wait_on_a_lock(approver_pid), "the approval should be waiting for the target"
    released.set()  # the reconcile now appends its audit event and commits
    reconciler.join(20)
    approver.join(20)
    assert outcome == {"reconcile": "ok", "approval": "ok"}
    assert PromotionRequest.objects.get(pk=request_id).state == "approved"
    assert Release.objects.filter(target=target, promotion_id=request_id).exists()


@pytest.mark.parametrize("approvals_required", [2, 0], ids=["reviewed", "no-approvals"])
def test_a_new_promotion_and_a_reconcile_of_its_target_do_not_deadlock(world, approvals_required):
    """A new request locks the target before its audit event takes the chain head: under a policy that
    needs no approvals it starts a release on the target at once (that order deadlocked: a 500 on
    POST /promotions/). Row locks are FOR NO KEY UPDATE, so COMMIT's deferred foreign-key check on the
    target (FOR KEY SHARE) never waits for a reconcile either (it did with FOR UPDATE)."""
    target = DeploymentTarget.objects.get(name="prod")
    governance.policy_set(
        actor=world["admin"].user, target=target, rules={**POLICY, "approvals_required": approvals_required}
    )
    holding, released, outcome = threading.Event(), threading.Event(), {}
    requester_pid = []

    def request():
        requester_pid.append(connection.cursor().connection.info.backend_pid)
        return promote(world["owner"]).status_code

    reconciler = in_thread(outcome, "reconcile", lambda: reconcile_like(target, holding, released))
    assert holding.wait(10)
    requester = in_thread(outcome, "request", request)
    assert comes_to_wait_on_a_lock(requester_pid), "the request should be waiting for the target"
    released.set()
    reconciler.join(20)
    requester.join(20)
    assert outcome == {"reconcile": "ok", "request": 201}
    request = PromotionRequest.objects.get(target=target)
    assert request.state == ("approved" if approvals_required == 0 else "pending")
    assert Release.objects.filter(promotion=request).exists() == (approvals_required == 0)
