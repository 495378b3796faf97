"""Concurrent changes of one membership (or model-wide permission) write one audit event per row changed.

Django reads which rows an add() is missing, or takes the ids a remove() names, before anything is locked, inserts
ignoring conflicts, and sends post_add / post_remove with the ids it started from: two transactions adding one user to
one group both recorded `membership.granted` for the one row that exists. Each test holds the first change's
transaction open until the second waits for a row lock (pg_stat_activity), then lets it commit.
"""

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from tests.governance.test_lock_order import while_held
from tests.test_access_audit import NewEvents, perm
from tests.test_account_audit import _no_actor_left_from_an_earlier_request  # noqa: F401 - autouse fixture

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()


@pytest.fixture
def alice(db):
    return User.objects.create_user(username="alice", password=None)


@pytest.fixture
def interns(db):
    return Group.objects.create(name="interns")


def one_after_the_other(first, second) -> None:
    """Run `first()` in a transaction held open until `second()`, on its own connection, waits for a row lock; then
    commit it. Both must end without an exception."""

    def ok(change):
        def run():
            change()
            return "ok"

        return run

    outcome = while_held(ok(first), ok(second))
    assert outcome == {"held": "ok", "waiter": "ok"}, outcome


def fresh(model, pk):
    """The row read on the calling thread's own connection (a thread must not use another's instance cache)."""
    return model.objects.get(pk=pk)


def changes(new) -> list[tuple]:
    return [
        (e.action, e.subject_type, json.loads(e.before or "null"), json.loads(e.after or "null")) for e in new.events
    ]


def test_two_concurrent_adds_of_one_membership_are_audited_once(alice, interns):
    add = lambda: fresh(User, alice.pk).groups.add(interns.pk)  # noqa: E731
    with NewEvents() as new:
        one_after_the_other(add, add)
    assert alice.groups.count() == 1
    assert changes(new) == [("membership.granted", "auth.user", None, {"groups": ["interns"]})]


def test_an_add_from_each_side_of_one_membership_is_audited_once(alice, interns):
    with NewEvents() as new:
        one_after_the_other(
            lambda: fresh(User, alice.pk).groups.add(interns.pk),
            lambda: fresh(Group, interns.pk).user_set.add(alice.pk),
        )
    assert changes(new) == [("membership.granted", "auth.user", None, {"groups": ["interns"]})]


def test_two_concurrent_removes_of_one_membership_are_audited_once(alice, interns):
    alice.groups.add(interns)
    with NewEvents() as new:
        one_after_the_other(
            lambda: fresh(User, alice.pk).groups.remove(interns.pk),
            lambda: fresh(Group, interns.pk).user_set.remove(alice.pk),
        )
    assert not alice.groups.exists()
    assert changes(new) == [("membership.revoked", "auth.user", {"groups": ["interns"]}, None)]


def test_a_clear_after_a_concurrent_remove_records_only_what_it_removed(alice, interns):
    other = Group.objects.create(name="other")
    alice.groups.add(interns, other)
    with NewEvents() as new:
        one_after_the_other(
            lambda: fresh(User, alice.pk).groups.remove(interns.pk),
            lambda: fresh(User, alice.pk).groups.clear(),
        )
    assert changes(new) == [
        ("membership.revoked", "auth.user", {"groups": ["interns"]}, None),
        ("membership.revoked", "auth.user", {"groups": ["other"]}, None),
    ]


def test_a_group_side_clear_after_a_concurrent_remove_records_only_what_it_removed(alice, interns):
    bob = User.objects.create_user(username="bob", password=None)
    interns.user_set.add(alice, bob)
    with NewEvents() as new:
        one_after_the_other(
            lambda: fresh(User, alice.pk).groups.remove(interns.pk),
            lambda: fresh(Group, interns.pk).user_set.clear(),
        )
    assert not interns.user_set.exists()
    assert changes(new) == [
        ("membership.revoked", "auth.user", {"groups": ["interns"]}, None),
        ("membership.revoked", "auth.group", {"user_set": ["bob"]}, None),
    ]


def test_a_permission_granted_from_each_side_at_once_is_audited_once(alice, interns):
    view_group = perm("auth.view_group")
    with NewEvents() as new:
        one_after_the_other(
            lambda: fresh(User, alice.pk).user_permissions.add(view_group.pk),
            lambda: perm("auth.view_group").user_set.add(alice.pk),
        )
        one_after_the_other(
            lambda: fresh(Group, interns.pk).permissions.add(view_group.pk),
            lambda: perm("auth.view_group").group_set.add(interns.pk),
        )
    assert changes(new) == [
        ("permission.granted", "auth.user", None, {"user_permissions": ["auth.view_group"]}),
        ("permission.granted", "auth.group", None, {"permissions": ["auth.view_group"]}),
    ]


def test_removing_what_is_not_there_writes_nothing(alice, interns):
    """Only rows that change are audited: removing a membership or permission that does not exist is no event (it
    was a `revoked` event for a row that never existed)."""
    other = Group.objects.create(name="other")
    alice.groups.add(interns)
    with NewEvents() as new:
        alice.groups.remove(other)
        interns.user_set.remove(User.objects.create_user(username="bob", password=None))
        alice.user_permissions.remove(perm("auth.view_group"))
        perm("auth.view_group").group_set.remove(interns)
    assert [e.action for e in new.events] == ["user.created"]
    with NewEvents() as new:
        alice.groups.remove(interns, other)  # one of the two is there: that one is audited
    assert changes(new) == [("membership.revoked", "auth.user", {"groups": ["interns"]}, None)]


def test_membership_changes_are_recorded_once_each_on_sqlite_too(sqlite_shell):
    """The embedded default: SQLite has no row locks (its writers take turns on the whole database); the changes
    are still narrowed to the rows that change."""
    script = (
        "from django.contrib.auth.models import Group, Permission, User\n"
        "from audit.models import AuditEvent\n"
        "alice = User.objects.create_user('alice')\n"
        "interns = Group.objects.create(name='interns')\n"
        "view = Permission.objects.get(codename='view_group')\n"
        "start = AuditEvent.objects.order_by('-seq').first().seq\n"
        "alice.groups.add(interns)\n"
        "interns.user_set.add(alice)\n"
        "interns.user_set.remove(alice)\n"
        "alice.groups.remove(interns)\n"
        "view.user_set.add(alice)\n"
        "alice.user_permissions.clear()\n"
        "view.group_set.remove(interns)\n"
        "print('actions', [e.action for e in AuditEvent.objects.filter(seq__gt=start).order_by('seq')])\n"
    )
    printed, _ = sqlite_shell(script)
    expected = ["membership.granted", "membership.revoked", "permission.granted", "permission.revoked"]
    assert f"actions {expected}" in printed, printed
