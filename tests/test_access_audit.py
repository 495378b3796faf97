"""Changes of access (groups, permissions, object permissions) are audited; secrets never reach the log."""

import json
import secrets

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction

from accounts import services
from audit.models import AuditEvent
from audit.services import REDACTED, record


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user(username="alice", password=None)


@pytest.fixture
def reviewers(db):
    return Group.objects.create(name="target-approvers")


def perm(name: str) -> Permission:
    app_label, codename = name.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


class NewEvents:
    """The events written inside the with-block."""

    def __enter__(self):
        self.start = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
        return self

    def __exit__(self, *exc):
        self.events = list(AuditEvent.objects.filter(seq__gt=self.start).order_by("seq"))

    def only(self) -> AuditEvent:
        assert len(self.events) == 1, [(e.action, e.subject_type, e.subject_id) for e in self.events]
        return self.events[0]


def payload(text: str):
    return json.loads(text)


# --- group membership -----------------------------------------------------------------------


def test_adding_a_user_to_a_group_is_audited(alice, reviewers):
    with NewEvents() as new:
        alice.groups.add(reviewers)
    event = new.only()
    assert event.action == "membership.granted"
    assert (event.subject_type, event.subject_id, event.subject_repr) == ("auth.user", str(alice.pk), "alice")
    assert payload(event.after) == {"groups": ["target-approvers"]}
    assert payload(event.before) is None


def test_adding_from_the_group_side_is_audited(alice, reviewers):
    with NewEvents() as new:
        reviewers.user_set.add(alice)
    event = new.only()
    assert event.action == "membership.granted"
    assert (event.subject_type, event.subject_id) == ("auth.group", str(reviewers.pk))
    assert payload(event.after) == {"user_set": ["alice"]}


def test_removing_and_clearing_membership_is_audited(alice, reviewers):
    other = Group.objects.create(name="other")
    alice.groups.add(reviewers, other)
    with NewEvents() as removed:
        alice.groups.remove(reviewers)
    event = removed.only()
    assert event.action == "membership.revoked"
    assert payload(event.before) == {"groups": ["target-approvers"]}
    with NewEvents() as cleared:
        alice.groups.clear()
    assert payload(cleared.only().before) == {"groups": ["other"]}
    with NewEvents() as noop:
        alice.groups.clear()  # nothing left to remove: nothing to audit
    assert noop.events == []


def test_membership_change_and_its_event_roll_back_together(alice, reviewers):
    with NewEvents() as new, pytest.raises(ZeroDivisionError), transaction.atomic():
        alice.groups.add(reviewers)
        1 / 0  # noqa: B018
    assert new.events == []
    assert not alice.groups.exists()


# --- model-wide permissions -----------------------------------------------------------------


def test_giving_a_group_a_permission_is_audited(reviewers):
    with NewEvents() as new:
        reviewers.permissions.add(perm("audit.view_auditevent"))
    event = new.only()
    assert event.action == "permission.granted"
    assert (event.subject_type, event.subject_id) == ("auth.group", str(reviewers.pk))
    assert payload(event.after) == {"permissions": ["audit.view_auditevent"]}
    with NewEvents() as new:
        reviewers.permissions.remove(perm("audit.view_auditevent"))
    assert new.only().action == "permission.revoked"
    assert payload(new.only().before) == {"permissions": ["audit.view_auditevent"]}


def test_giving_a_user_a_permission_is_audited(alice):
    with NewEvents() as new:
        alice.user_permissions.add(perm("auth.view_group"), perm("auth.change_group"))
    event = new.only()
    assert event.action == "permission.granted"
    assert event.subject_id == str(alice.pk)
    assert payload(event.after) == {"user_permissions": ["auth.change_group", "auth.view_group"]}


def test_granting_from_the_permission_side_is_audited(alice, reviewers):
    """perm.group_set.add(group) changes the same table as group.permissions.add(perm)."""
    bob = get_user_model().objects.create_user(username="bob", password=None)
    with NewEvents() as new:
        perm("audit.view_auditevent").group_set.add(reviewers)
        perm("auth.view_group").user_set.add(alice, bob)
    assert [(e.action, e.subject_type, e.subject_id) for e in new.events] == [
        ("permission.granted", "auth.group", str(reviewers.pk)),
        ("permission.granted", "auth.user", str(alice.pk)),
        ("permission.granted", "auth.user", str(bob.pk)),
    ]
    assert payload(new.events[0].after) == {"permissions": ["audit.view_auditevent"]}
    assert payload(new.events[1].after) == {"user_permissions": ["auth.view_group"]}
    with NewEvents() as removed:
        perm("audit.view_auditevent").group_set.remove(reviewers)
        perm("auth.view_group").user_set.clear()
    assert [(e.action, e.subject_id) for e in removed.events] == [
        ("permission.revoked", str(reviewers.pk)),
        ("permission.revoked", str(alice.pk)),
        ("permission.revoked", str(bob.pk)),
    ]
    assert payload(removed.events[0].before) == {"permissions": ["audit.view_auditevent"]}


def test_admin_change_is_audited_with_the_admin_as_actor(db, client, reviewers):
    admin = get_user_model().objects.create_superuser(username="root", password="pw-root-long")
    client.force_login(admin)
    wanted = perm("audit.view_auditevent")
    with NewEvents() as new:
        response = client.post(
            f"/admin/auth/group/{reviewers.pk}/change/",
            {"name": reviewers.name, "permissions": [wanted.pk]},
            HTTP_X_REQUEST_ID="admin-req-1",
        )
    assert response.status_code == 302, response.content[:2000]
    granted = [e for e in new.events if e.action == "permission.granted"]
    assert len(granted) == 1
    assert granted[0].actor_username == "root"
    assert granted[0].actor_id == admin.pk
    assert granted[0].request_id == "admin-req-1"
    assert payload(granted[0].after) == {"permissions": ["audit.view_auditevent"]}


# --- object permissions through the service -------------------------------------------------


def test_permission_grant_and_revoke_are_audited(alice, reviewers):
    from registry.models import RegisteredModel

    actor = get_user_model().objects.create_user(username="owner", password=None)
    target = RegisteredModel.objects.create(namespace="acme", name="governed")
    perm = "registry.change_registeredmodel"
    assert not alice.has_perm(perm, target)

    with NewEvents() as granted:
        services.permission_grant(actor=actor, principal=alice, perm=perm, obj=target, reason="on call")
    event = granted.only()
    assert event.action == "permission.granted"
    assert (event.subject_type, event.subject_id, event.subject_repr) == (
        "registry.registeredmodel",
        str(target.pk),
        "acme/governed",
    )
    assert payload(event.after) == {"perm": perm, "user": "alice"}
    assert (event.actor_username, event.actor_id, event.reason) == ("owner", actor.pk, "on call")
    alice = get_user_model().objects.get(pk=alice.pk)  # fresh permission cache
    assert alice.has_perm(perm, target)

    with NewEvents() as group_granted:
        services.permission_grant(actor=actor, principal=reviewers, perm="registry.view_registeredmodel", obj=target)
    assert payload(group_granted.only().after) == {"perm": "registry.view_registeredmodel", "group": "target-approvers"}

    with NewEvents() as revoked:
        services.permission_revoke(actor=actor, principal=alice, perm=perm, obj=target, reason="done")
    event = revoked.only()
    assert event.action == "permission.revoked"
    assert payload(event.before) == {"perm": perm, "user": "alice"}
    assert payload(event.after) is None
    alice = get_user_model().objects.get(pk=alice.pk)
    assert not alice.has_perm(perm, target)


def test_object_permissions_only_on_types_that_have_their_own_tables(alice, reviewers):
    """A group (any type without object permission tables of its own) takes no object permission: guardian's
    generic row would grant nothing here (access checks read models' and targets' own tables) and would outlive
    the object, which it names without a foreign key. Refused, nothing written or audited."""
    from guardian.models import GroupObjectPermission, UserObjectPermission

    actor = get_user_model().objects.create_user(username="owner", password=None)
    group = Group.objects.create(name="a group")
    for principal in (alice, reviewers):
        with NewEvents() as events, pytest.raises(services.InvalidInput) as refused:
            services.permission_grant(actor=actor, principal=principal, perm="auth.change_group", obj=group)
        assert "group objects take no object permissions" in refused.value.message
        assert events.events == []
    assert not UserObjectPermission.objects.exists() and not GroupObjectPermission.objects.exists()


# --- secrets never reach the log ------------------------------------------------------------


def stored(event: AuditEvent) -> AuditEvent:
    return AuditEvent.objects.get(seq=event.seq)


def test_secret_keys_are_redacted(db):
    after = {"password": "x", "api_key": "y", "nested": {"client_secret": "z"}, "credentials_ref": "env:FOO"}
    with transaction.atomic():
        event = stored(record(action="test.redact", subject_type="t", subject_id="1", after=after, before=after))
    for text in (event.after, event.before):
        assert payload(text) == {
            "password": REDACTED,
            "api_key": REDACTED,
            "nested": {"client_secret": REDACTED},
            "credentials_ref": "env:FOO",
        }
    assert event.hash == event.computed_hash()
    assert "x" not in payload(event.after).values()


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "PASSWORD",
        "passwd",
        "db_password",
        "apiKey",
        "api-key",
        "private_key",
        "client_secret",
        "webhookSecret",
        "secret",
        "secret_key",
        "SECRET_KEY",
        "aws_secret_access_key",
        "credential",
        "credentials",
        "Authorization",
        "token",
        "access_token",
        "hf_token",
        "replicate_api_token",
    ],
)
def test_more_secret_keys_are_redacted(db, key):
    with transaction.atomic():
        event = stored(record(action="t", subject_type="t", subject_id="1", after={"items": [{key: "s3cr3t"}]}))
    assert payload(event.after) == {"items": [{key: REDACTED}]}


@pytest.mark.parametrize(
    "key", ["credentials_ref", "token_id", "prefix", "tokens_used", "password_policy", "secret_name", "keys"]
)
def test_harmless_keys_are_kept(db, key):
    with transaction.atomic():
        event = stored(record(action="t", subject_type="t", subject_id="1", after={key: "value"}))
    assert payload(event.after) == {key: "value"}


def test_values_shaped_like_secrets_are_redacted(db):
    api_token = f"mgr_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    after = {
        "note": api_token,
        "list": ["fine", api_token],
        "header": "Bearer abc.def.ghi",
        "hook": "whsec_abcdef",
        "nearly": "mgr_short",
        "plain": "a normal sentence",
    }
    with transaction.atomic():
        event = stored(record(action="t", subject_type="t", subject_id="1", after=after))
    assert payload(event.after) == {
        "note": REDACTED,
        "list": ["fine", REDACTED],
        "header": REDACTED,
        "hook": REDACTED,
        "nearly": "mgr_short",
        "plain": "a normal sentence",
    }
    assert api_token not in event.after


def test_credentials_inside_urls_are_masked(db):
    """A token pasted into a repository URL (GitLab's CI_REPOSITORY_URL) or a CI link stays out of the log; the
    rest of the URL, and an ssh user name, stay as they were."""
    after = {
        "source": {
            "repository": "https://gitlab-ci-token:glcbt-64_sEcReT1@gitlab.example.com/acme/churn.git",
            "ci_run_url": "https://ci.example.com/run/1?token=SeCrEt2&attempt=2",
        },
        "facets": ["https://ghp_SeCrEt3@github.com/acme/x", "ssh://git@github.com/acme/x.git"],
        "note": "cloned from https://u:SeCrEt4@host/repo for run 7",
    }
    with transaction.atomic():
        event = stored(record(action="t", subject_type="t", subject_id="1", after=after))
    assert payload(event.after) == {  # an http(s) URL's whole user part: a token may be the user name
        "source": {
            "repository": "https://***@gitlab.example.com/acme/churn.git",
            "ci_run_url": "https://ci.example.com/run/1?token=***&attempt=2",
        },
        "facets": ["https://***@github.com/acme/x", "ssh://git@github.com/acme/x.git"],
        "note": "cloned from https://***@host/repo for run 7",
    }
    assert "SeCrEt" not in event.after


def test_issued_token_never_in_any_payload(db, alice):
    issued = services.token_create(actor=alice, user=alice, name="n", scopes=["read"])
    with transaction.atomic():
        record(action="t", subject_type="t", subject_id="1", after={"oops": issued.plaintext})
    for event in AuditEvent.objects.all():
        assert issued.plaintext not in json.dumps(event.as_export_dict())


def test_membership_changes_outside_a_request_name_the_command_or_system(db):
    """Outside a web request the actor was empty: who added a user to `auditors` from a shell left no trace,
    while the user events beside it said cli:shell."""
    from django.contrib.auth.models import Group

    from accounts.signals import _system_actor
    from core import context

    user = get_user_model().objects.create_user(username="mallory")
    acting = context.actor.set(None)  # as in a shell: no request has set one
    try:
        with NewEvents() as new:
            user.groups.add(Group.objects.create(name="auditors-x"))
    finally:
        context.actor.reset(acting)
    [granted] = [e for e in new.events if e.action == "membership.granted"]
    assert granted.actor_username == _system_actor() != ""
