"""Groups are audited however they change (admin, a shell): created, renamed (before and after) and deleted, with the
memberships the deletion's cascade drops. Policies name approver groups by name, so a rename or a deletion changes who
may approve promotions."""

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import transaction

from accounts import roles
from audit.models import AuditEvent
from tests.test_access_audit import NewEvents
from tests.test_account_audit import _no_actor_left_from_an_earlier_request  # noqa: F401 - autouse fixture

User = get_user_model()


@pytest.fixture
def admin_client(client, personas):
    client.force_login(personas["admin"].user)
    return client


@pytest.fixture
def interns(personas):
    """A group with one member, besides the personas' groups (reviewers holds the reviewer persona)."""
    group = Group.objects.create(name="interns")
    User.objects.create_user(username="intern", password=None).groups.add(group)
    return group


def payload(text: str):
    return json.loads(text)


def actions(events) -> list[str]:
    return [e.action for e in events]


def group_form(group, name: str) -> dict:
    """The admin's change form for `group`, its permissions as they are (only the name changes)."""
    return {"name": name, "permissions": list(group.permissions.values_list("pk", flat=True))}


def assert_chain_verifies() -> None:
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert f"OK: {AuditEvent.objects.count()} audit events verified" in out.getvalue()


# --- created --------------------------------------------------------------------------------------------------


def test_creating_a_group_is_audited(personas):
    with NewEvents() as new:
        group = Group.objects.create(name="interns")
    event = new.only()
    assert event.action == "group.created"
    assert (event.subject_type, event.subject_id, event.subject_repr) == ("auth.group", str(group.pk), "interns")
    assert payload(event.before) is None
    assert payload(event.after) == {"name": "interns"}
    assert (event.actor_username, event.actor_id) == ("system", None)


def test_creating_a_group_in_the_admin_is_audited_as_the_admin(admin_client, personas):
    with NewEvents() as new:
        response = admin_client.post("/admin/auth/group/add/", {"name": "interns"}, HTTP_X_REQUEST_ID="grp-add-1")
    assert response.status_code == 302, response.content[:2000]
    group = Group.objects.get(name="interns")
    event = new.only()
    assert (event.action, event.subject_id) == ("group.created", str(group.pk))
    assert payload(event.after) == {"name": "interns"}
    assert (event.actor_username, event.actor_id, event.request_id) == ("admin", personas["admin"].user.pk, "grp-add-1")


# --- renamed --------------------------------------------------------------------------------------------------


def test_renaming_groups_to_take_over_an_approver_group_is_audited(personas, interns):
    """The reported case: the policy's approver group `reviewers` is renamed away and `interns` takes its name."""
    with NewEvents() as new:
        reviewers = Group.objects.get(name=roles.REVIEWERS)
        reviewers.name = "reviewers-old"
        reviewers.save()
        interns.name = roles.REVIEWERS
        interns.save()
    assert actions(new.events) == ["group.renamed", "group.renamed"]
    old, taken = new.events
    assert (old.subject_type, old.subject_id, old.subject_repr) == ("auth.group", str(reviewers.pk), "reviewers-old")
    assert (payload(old.before), payload(old.after)) == ({"name": "reviewers"}, {"name": "reviewers-old"})
    assert (taken.subject_id, taken.subject_repr) == (str(interns.pk), "reviewers")
    assert (payload(taken.before), payload(taken.after)) == ({"name": "interns"}, {"name": "reviewers"})
    assert all(e.actor_username == "system" for e in new.events)
    assert_chain_verifies()


def test_renaming_a_group_in_the_admin_is_audited_as_the_admin(admin_client, personas):
    reviewers = Group.objects.get(name=roles.REVIEWERS)
    with NewEvents() as new:
        response = admin_client.post(
            f"/admin/auth/group/{reviewers.pk}/change/",
            group_form(reviewers, "reviewers-old"),
            HTTP_X_REQUEST_ID="grp-rename-1",
        )
    assert response.status_code == 302, response.content[:2000]
    event = new.only()  # the name only: the permissions were posted as they are
    assert (event.action, event.subject_id) == ("group.renamed", str(reviewers.pk))
    assert (payload(event.before), payload(event.after)) == ({"name": "reviewers"}, {"name": "reviewers-old"})
    assert (event.actor_username, event.actor_id, event.request_id) == (
        "admin",
        personas["admin"].user.pk,
        "grp-rename-1",
    )


def test_a_save_that_does_not_change_the_name_writes_nothing(admin_client, interns):
    with NewEvents() as unchanged:
        interns.save()
        interns.save(update_fields=["name"])
        Group.objects.get(pk=interns.pk).save()
        response = admin_client.post(f"/admin/auth/group/{interns.pk}/change/", group_form(interns, "interns"))
        assert response.status_code == 302, response.content[:2000]
    assert unchanged.events == []

    with NewEvents() as renamed:
        interns.name = "trainees"
        interns.save(update_fields=["name"])
        interns.save()  # the same name again
    event = renamed.only()
    assert (event.action, payload(event.before), payload(event.after)) == (
        "group.renamed",
        {"name": "interns"},
        {"name": "trainees"},
    )


def test_a_rename_and_its_event_roll_back_together(interns):
    with NewEvents() as new, pytest.raises(ZeroDivisionError), transaction.atomic():
        interns.name = "reviewers-too"
        interns.save()
        1 / 0  # noqa: B018
    assert new.events == []
    assert Group.objects.get(pk=interns.pk).name == "interns"


def test_an_admin_rename_whose_event_cannot_be_written_does_not_happen(admin_client, monkeypatch):
    from accounts import signals

    def failing_record(**fields):
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(signals, "record", failing_record)
    admin_client.raise_request_exception = False
    reviewers = Group.objects.get(name=roles.REVIEWERS)
    with NewEvents() as new:
        response = admin_client.post(
            f"/admin/auth/group/{reviewers.pk}/change/", group_form(reviewers, "reviewers-old")
        )
    assert response.status_code == 500
    assert Group.objects.get(pk=reviewers.pk).name == roles.REVIEWERS
    assert new.events == []


# --- deleted --------------------------------------------------------------------------------------------------


def test_deleting_a_group_records_the_memberships_it_drops(personas, interns):
    reviewers = Group.objects.get(name=roles.REVIEWERS)
    reviewers.user_set.add(User.objects.get(username="intern"))
    pk = reviewers.pk
    with NewEvents() as new:
        reviewers.delete()
    assert not Group.objects.filter(pk=pk).exists()
    assert not personas["reviewer"].user.groups.filter(pk=pk).exists()
    # The group's model-wide permissions go with it too (tests/test_account_audit_cascades.py covers them).
    assert actions(new.events) == ["membership.revoked", "permission.revoked", "group.deleted"]
    revoked, deleted = new.events[0], new.events[-1]
    assert (revoked.subject_type, revoked.subject_id, revoked.subject_repr) == ("auth.group", str(pk), "reviewers")
    assert payload(revoked.before) == {"user_set": ["intern", "reviewer"]}
    assert payload(revoked.after) is None
    assert revoked.reason == "group deleted"
    assert (deleted.subject_type, deleted.subject_id, deleted.subject_repr) == ("auth.group", str(pk), "reviewers")
    assert payload(deleted.before) == {"name": "reviewers"}
    assert payload(deleted.after) is None
    assert all(e.actor_username == "system" for e in new.events)
    assert_chain_verifies()


def test_deleting_an_empty_group_records_only_the_deletion(personas):
    empty = Group.objects.create(name="empty")
    with NewEvents() as new:
        Group.objects.filter(pk=empty.pk).delete()  # a queryset delete runs the same signals
    event = new.only()
    assert (event.action, event.subject_id) == ("group.deleted", str(empty.pk))
    assert payload(event.before) == {"name": "empty"}


def test_deleting_a_group_in_the_admin_is_audited_as_the_admin(admin_client, personas, interns):
    pk = interns.pk
    with NewEvents() as new:
        response = admin_client.post(f"/admin/auth/group/{pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content[:2000]
    assert not Group.objects.filter(pk=pk).exists()
    assert actions(new.events) == ["membership.revoked", "group.deleted"]
    assert payload(new.events[0].before) == {"user_set": ["intern"]}
    assert payload(new.events[1].before) == {"name": "interns"}
    assert {(e.actor_username, e.actor_id) for e in new.events} == {("admin", personas["admin"].user.pk)}


@pytest.mark.django_db(transaction=True)
def test_a_deletion_whose_event_cannot_be_written_does_not_happen(monkeypatch):
    """Even outside any transaction (autocommit): Django deletes in one, and the events are written inside it."""
    from accounts import signals

    interns = Group.objects.create(name="interns")
    User.objects.create_user(username="intern", password=None).groups.add(interns)
    assert not transaction.get_connection().in_atomic_block

    def failing_record(**fields):
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(signals, "record", failing_record)
    with NewEvents() as new, pytest.raises(RuntimeError, match="audit log unavailable"):
        interns.delete()
    assert Group.objects.filter(pk=interns.pk).exists()
    assert list(Group.objects.get(pk=interns.pk).user_set.values_list("username", flat=True)) == ["intern"]
    assert new.events == []


def test_create_rename_delete_keep_the_chain_intact(personas):
    with NewEvents() as new:
        group = Group.objects.create(name="temp")
        group.user_set.add(personas["outsider"].user)
        group.name = "temp-renamed"
        group.save()
        group.delete()
    assert actions(new.events) == [
        "group.created",
        "membership.granted",
        "group.renamed",
        "membership.revoked",
        "group.deleted",
    ]
    assert_chain_verifies()
