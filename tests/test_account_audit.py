"""Accounts are audited however they change (admin, createsuperuser, create_user, a shell): created, deleted, their
superuser / staff / active flags, and the fact of a password change (never the hash); logging in is not audited.
The token admin's Revoke action revokes only what token_revoke allows, all of the selection or none of it."""

import json
import sys

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.db import transaction

from accounts import services
from accounts.models import ApiToken
from audit.models import AuditEvent
from core import context
from tests.test_access_audit import NewEvents, perm

User = get_user_model()
FLAGS = ("is_superuser", "is_staff", "is_active")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _no_actor_left_from_an_earlier_request():
    """A request leaves its user in core.context (set, not reset): start each test with none, as a process does."""
    acting = context.actor.set(None)
    yield
    context.actor.reset(acting)


@pytest.fixture
def root(db):
    return User.objects.create_superuser(username="root", password="pw-root-long")


@pytest.fixture
def alice(db):
    return User.objects.create_user(username="alice", password="pw-alice-long")


@pytest.fixture
def admin_client(client, root):
    client.force_login(root)
    return client


def payload(text: str):
    return json.loads(text)


def actions(events) -> list[str]:
    return [e.action for e in events]


def everything_stored(events) -> str:
    """All an event holds, as the export writes it (payloads, reason, subject, stored line)."""
    return "\n".join(json.dumps(e.as_export_dict()) + AuditEvent.objects.get(seq=e.seq).line for e in events)


def change_form(user, **flags) -> dict:
    data = {
        "username": user.username,
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "initial-date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "initial-date_joined_1": user.date_joined.strftime("%H:%M:%S"),
    }
    return data | {flag: "on" for flag, on in flags.items() if on}


# --- the admin ----------------------------------------------------------------------------------------------


def test_promoting_a_user_to_superuser_in_the_admin_is_audited(admin_client, root, alice):
    with NewEvents() as new:
        response = admin_client.post(
            f"/admin/auth/user/{alice.pk}/change/",
            change_form(alice, is_active=True, is_staff=True, is_superuser=True),
            HTTP_X_REQUEST_ID="admin-promote-1",
        )
    assert response.status_code == 302, response.content[:2000]
    alice.refresh_from_db()
    assert alice.is_superuser and alice.is_staff
    event = new.only()
    assert event.action == "user.changed"
    assert (event.subject_type, event.subject_id, event.subject_repr) == ("auth.user", str(alice.pk), "alice")
    assert payload(event.before) == {"is_superuser": False, "is_staff": False}
    assert payload(event.after) == {"is_superuser": True, "is_staff": True}
    assert (event.actor_username, event.actor_id, event.request_id) == ("root", root.pk, "admin-promote-1")


def test_deactivating_in_the_admin_is_audited_and_an_unchanged_save_is_not(admin_client, alice):
    with NewEvents() as new:
        response = admin_client.post(f"/admin/auth/user/{alice.pk}/change/", change_form(alice, is_active=False))
    assert response.status_code == 302, response.content[:2000]
    event = new.only()
    assert (event.action, payload(event.before), payload(event.after)) == (
        "user.changed",
        {"is_active": True},
        {"is_active": False},
    )
    alice.refresh_from_db()
    with NewEvents() as unchanged:
        response = admin_client.post(f"/admin/auth/user/{alice.pk}/change/", change_form(alice, is_active=False))
    assert response.status_code == 302
    assert unchanged.events == []


def test_adding_a_user_in_the_admin_is_audited_without_the_password(admin_client, root):
    password = "Zx9!long-enough-pw"
    with NewEvents() as new:
        response = admin_client.post(
            "/admin/auth/user/add/",
            {"username": "carol", "usable_password": "true", "password1": password, "password2": password},
        )
    assert response.status_code == 302, response.content[:2000]
    carol = User.objects.get(username="carol")
    event = new.only()  # one event for the new user: no separate one for its first password
    assert (event.action, event.subject_id, event.actor_username, event.actor_id) == (
        "user.created",
        str(carol.pk),
        "root",
        root.pk,
    )
    assert payload(event.after) == {"username": "carol", "is_superuser": False, "is_staff": False, "is_active": True}
    stored = everything_stored(new.events)
    assert password not in stored
    assert carol.password not in stored
    assert carol.password.split("$")[-1] not in stored  # not even the digest


def test_changing_a_password_in_the_admin_is_audited_as_a_fact(admin_client, root, alice):
    old_hash = alice.password
    password = "Zx9!another-long-pw"
    with NewEvents() as new:
        response = admin_client.post(
            f"/admin/auth/user/{alice.pk}/password/",
            {"password1": password, "password2": password, "usable_password": "true"},
            HTTP_X_REQUEST_ID="admin-pw-1",
        )
    assert response.status_code == 302, response.content[:2000]
    alice.refresh_from_db()
    assert alice.password != old_hash and alice.check_password(password)
    event = new.only()
    assert (event.action, event.subject_id, event.actor_username, event.request_id) == (
        "user.password_changed",
        str(alice.pk),
        "root",
        "admin-pw-1",
    )
    assert payload(event.before) is None
    assert payload(event.after) == {"usable": True}
    stored = everything_stored(new.events)
    for secret in (password, alice.password, old_hash, alice.password.split("$")[-1], old_hash.split("$")[-1]):
        assert secret not in stored


def test_the_admin_password_change_and_its_event_commit_together(admin_client, alice, monkeypatch):
    """The event cannot be written: the password stays as it was (the admin's password view is one transaction)."""
    from accounts import signals

    def failing_record(**fields):
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(signals, "record", failing_record)
    admin_client.raise_request_exception = False
    old_hash = alice.password
    with NewEvents() as new:
        response = admin_client.post(
            f"/admin/auth/user/{alice.pk}/password/",
            {"password1": "Zx9!rolled-back-pw", "password2": "Zx9!rolled-back-pw", "usable_password": "true"},
        )
    assert response.status_code == 500
    alice.refresh_from_db()
    assert alice.password == old_hash
    assert new.events == []


def test_deleting_a_user_in_the_admin_is_audited(admin_client, root, alice):
    """With the groups the deletion took the user out of (a cascade that sends no membership signal)."""
    alice.groups.add(Group.objects.create(name="reviewers-b"), Group.objects.create(name="auditors-b"))
    alice_pk = alice.pk
    with NewEvents() as new:
        response = admin_client.post(f"/admin/auth/user/{alice_pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content[:2000]
    assert not User.objects.filter(pk=alice_pk).exists()
    event = new.only()
    assert (event.action, event.subject_type, event.subject_id, event.subject_repr) == (
        "user.deleted",
        "auth.user",
        str(alice_pk),
        "alice",
    )
    assert payload(event.before) == {
        "username": "alice",
        "is_superuser": False,
        "is_staff": False,
        "is_active": True,
        "groups": ["auditors-b", "reviewers-b"],
    }
    assert (event.actor_username, event.actor_id) == ("root", root.pk)


def test_signing_in_is_not_audited(db, client, alice):
    """Django saves last_login at every sign-in (update_fields=["last_login"]): no event, not even a read."""
    with NewEvents() as new:
        response = client.post("/admin/login/", {"username": "alice", "password": "pw-alice-long"})
        signed_in = client.post("/accounts/login/", {"username": "alice", "password": "pw-alice-long"})
        assert signed_in.status_code == 302
    assert response.status_code == 200  # not staff: the form again, but authenticated
    alice.refresh_from_db()
    assert alice.last_login is not None
    assert new.events == []


# --- outside the admin: create_user, createsuperuser, a shell ----------------------------------------------


def test_create_user_and_createsuperuser_are_audited_with_a_system_actor(db, monkeypatch):
    with NewEvents() as new:
        User.objects.create_user(username="dave", password="pw-dave-long", is_staff=True)
    event = new.only()
    assert event.action == "user.created"
    assert payload(event.after) == {"username": "dave", "is_superuser": False, "is_staff": True, "is_active": True}
    assert (event.actor_username, event.actor_id) == ("system", None)
    assert "pw-dave-long" not in everything_stored(new.events)

    monkeypatch.setattr(sys, "argv", ["manage.py", "createsuperuser", "--username", "erin"])
    with NewEvents() as new:
        call_command("createsuperuser", interactive=False, username="erin", email="erin@example.com", verbosity=0)
    event = new.only()
    assert event.action == "user.created"
    assert payload(event.after) == {"username": "erin", "is_superuser": True, "is_staff": True, "is_active": True}
    assert (event.actor_username, event.actor_id) == ("cli:createsuperuser", None)


def test_shell_changes_are_audited_once_each(db, alice):
    with NewEvents() as new:
        alice.is_superuser = True
        alice.save(update_fields=["is_superuser"])
        alice.set_password("pw-alice-new")
        alice.save()
        alice.set_unusable_password()
        alice.save(update_fields=["password"])
        alice.set_unusable_password()  # still no usable password: nothing changed for signing in
        alice.save(update_fields=["password"])
        alice.save()  # nothing changed
    assert actions(new.events) == ["user.changed", "user.password_changed", "user.password_changed"]
    assert payload(new.events[0].after) == {"is_superuser": True}
    assert [payload(e.after) for e in new.events[1:]] == [{"usable": True}, {"usable": False}]
    assert all(e.actor_username == "system" for e in new.events)


def test_a_flag_changed_on_the_instance_but_not_saved_is_not_audited(db, alice):
    with NewEvents() as new:
        alice.is_superuser = True
        alice.first_name = "Alice"
        alice.save(update_fields=["first_name"])  # is_superuser is not written
    assert new.events == []
    alice.refresh_from_db()
    assert not alice.is_superuser


class OneIterationPBKDF2(PBKDF2PasswordHasher):
    iterations = 1


class TwoIterationPBKDF2(PBKDF2PasswordHasher):
    iterations = 2


def test_a_password_hash_upgrade_at_sign_in_is_not_a_password_change(db, settings, alice):
    settings.PASSWORD_HASHERS = [f"{__name__}.TwoIterationPBKDF2"]
    User.objects.filter(pk=alice.pk).update(password=make_password("pw-alice-long", hasher=OneIterationPBKDF2()))
    with NewEvents() as new:
        assert User.objects.get(pk=alice.pk).check_password("pw-alice-long")  # re-hashed with 2 iterations
    assert "$2$" in User.objects.get(pk=alice.pk).password
    assert new.events == []


def test_account_change_and_its_event_roll_back_together(db, alice):
    with NewEvents() as new, pytest.raises(ZeroDivisionError), transaction.atomic():
        alice.is_superuser = True
        alice.save()
        1 / 0  # noqa: B018
    assert new.events == []
    alice.refresh_from_db()
    assert not alice.is_superuser


def test_user_get_or_create_is_audited_once_as_its_actor(db):
    with NewEvents() as new:
        user, created = services.user_get_or_create(actor="cli:test", username="pipeline")
        services.user_get_or_create(actor="cli:test", username="pipeline")
    assert created and not user.has_usable_password()
    event = new.only()
    assert (event.action, event.actor_username) == ("user.created", "cli:test")


# --- the token admin's Revoke action -----------------------------------------------------------------------


@pytest.fixture
def operator(db):
    """Staff who may view and change tokens in the admin, not a superuser."""
    user = User.objects.create_user(username="ops", password="pw-ops-long", is_staff=True)
    user.user_permissions.add(perm("accounts.view_apitoken"), perm("accounts.change_apitoken"))
    return user


def revoke_in_admin(client, *tokens):
    return client.post(
        "/admin/accounts/apitoken/",
        {"action": "revoke", "_selected_action": [t.pk for t in tokens]},
        follow=True,
    )


def shown(response) -> list[str]:
    return [m.message for m in get_messages(response.wsgi_request)]


def test_staff_revoking_another_users_token_in_the_admin_revokes_nothing(client, operator, alice):
    own = services.token_create(actor=operator, user=operator, name="own", scopes=["read"]).token
    other = services.token_create(actor=alice, user=alice, name="ci", scopes=["read"]).token
    client.force_login(operator)
    with NewEvents() as new:
        response = revoke_in_admin(client, own, other)
    assert response.status_code == 200
    assert any("Nothing was revoked" in m and other.prefix in m for m in shown(response)), shown(response)
    assert not ApiToken.objects.filter(pk__in=[own.pk, other.pk], revoked_at__isnull=False).exists()
    assert new.events == []

    with NewEvents() as new:
        response = revoke_in_admin(client, own)
    assert response.status_code == 200
    assert ApiToken.objects.get(pk=own.pk).revoked_at is not None
    event = new.only()
    assert (event.action, event.actor_username, event.reason) == ("token.revoked", "ops", "revoked in admin")


def test_a_superuser_revokes_anyones_tokens_in_the_admin(client, root, alice):
    tokens = [services.token_create(actor=alice, user=alice, name=f"t{i}", scopes=["read"]).token for i in range(2)]
    client.force_login(root)
    with NewEvents() as new:
        response = revoke_in_admin(client, *tokens)
    assert response.status_code == 200
    assert "Revoked 2 token(s)." in shown(response)
    assert ApiToken.objects.filter(pk__in=[t.pk for t in tokens], revoked_at__isnull=True).count() == 0
    assert actions(new.events) == ["token.revoked", "token.revoked"]


def test_staff_who_may_only_view_tokens_have_no_revoke_action(client, alice):
    viewer = User.objects.create_user(username="viewer", password="pw-viewer-long", is_staff=True)
    viewer.user_permissions.add(perm("accounts.view_apitoken"))
    own = services.token_create(actor=viewer, user=viewer, name="own", scopes=["read"]).token
    client.force_login(viewer)
    assert b'value="revoke"' not in client.get("/admin/accounts/apitoken/").content
    with NewEvents() as new:
        response = revoke_in_admin(client, own)
    assert response.status_code == 200
    assert ApiToken.objects.get(pk=own.pk).revoked_at is None
    assert new.events == []
