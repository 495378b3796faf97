"""What a deletion takes away by cascade is audited as if revoked by hand: deleting a group, a user, a permission or an
object with object permissions records the model-wide permissions (`permission.revoked` on the holder), the object
permissions (`permission.revoked` on the object, guardian's generic and direct tables), a user's live API tokens
(`token.revoked`, as accounts.services.token_revoke) and, for a group, the fields naming it that the deletion empties
(`owner_group.cleared`), in the deletion's own transaction and a fixed number of statements however many objects the
group owned. Rows in guardian's generic tables can no longer be granted (accounts.services.permission_grant); the
fixtures make them with guardian itself, as an installation from before that rule holds them."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from guardian.models import GroupObjectPermission
from guardian.shortcuts import assign_perm

from accounts import access, services
from accounts.models import ApiToken
from audit import services as audit_services
from core import context
from governance import services as governance
from registry import services as registry
from registry.models import RegisteredModel
from tests.test_access_audit import NewEvents, perm
from tests.test_account_audit import _no_actor_left_from_an_earlier_request  # noqa: F401 - autouse fixture
from tests.test_group_audit import admin_client, assert_chain_verifies  # noqa: F401 - admin_client is a fixture

User = get_user_model()
OWNER_PERMS = [
    "registry.view_registeredmodel",
    "registry.register_version",
    "registry.request_promotion",
    "registry.manage_registeredmodel",
]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def team(personas):
    """A group with a member, two model-wide permissions, and object permissions in each kind of table: the four an
    owner group gets on a model it owns (registry's direct table), one on a target (governance's) and one on another
    group (guardian's generic table)."""
    admin = personas["admin"].user
    group = Group.objects.create(name="churn-team")
    carol = User.objects.create_user(username="carol", password=None)
    carol.groups.add(group)
    group.permissions.add(perm("registry.add_registeredmodel"), perm("audit.view_auditevent"))
    model = registry.model_create(actor=personas["owner"].user, namespace="acme", name="churn", owner_group=group.name)
    target = governance.target_create(
        actor=admin, name="prod", kind="self_hosted", stage="production", config={}, policy={"approvals_required": 1}
    )
    services.permission_grant(actor=admin, principal=group, perm="governance.deploy_deploymenttarget", obj=target)
    reviewers = Group.objects.get(name="reviewers")
    assign_perm("auth.change_group", group, reviewers)  # a generic row (see the module's docstring)
    return {"group": group, "carol": carol, "model": model, "target": target, "reviewers": reviewers}


def payload(text: str):
    return json.loads(text)


def summary(events) -> list[tuple]:
    return [(e.action, e.subject_type, e.subject_id, payload(e.before), payload(e.after)) for e in events]


def test_deleting_a_group_in_the_admin_records_every_access_it_drops(admin_client, personas, team):  # noqa: F811
    group, model, target, reviewers = team["group"], team["model"], team["target"], team["reviewers"]
    assert access.has_perm(team["carol"], "register_version", model)
    pk, model_id = group.pk, str(model.pk)
    with NewEvents() as new:
        response = admin_client.post(f"/admin/auth/group/{pk}/delete/", {"post": "yes"}, HTTP_X_REQUEST_ID="grp-del-9")
    assert response.status_code == 302, response.content[:2000]
    assert not Group.objects.filter(pk=pk).exists()
    assert RegisteredModel.objects.get(pk=model.pk).owner_group is None
    assert not access.has_perm(User.objects.get(pk=team["carol"].pk), "register_version", model)

    group_key = ("auth.group", str(pk))
    assert summary(new.events) == [
        ("membership.revoked", *group_key, {"user_set": ["carol"]}, None),
        (
            "permission.revoked",
            *group_key,
            {"permissions": ["audit.view_auditevent", "registry.add_registeredmodel"]},
            None,
        ),
        # guardian's generic table, then the models' direct ones (apps in INSTALLED_APPS order)
        (
            "permission.revoked",
            "auth.group",
            str(reviewers.pk),
            {"perm": "auth.change_group", "group": "churn-team"},
            None,
        ),
        *(
            ("permission.revoked", "registry.registeredmodel", model_id, {"perm": name, "group": "churn-team"}, None)
            for name in OWNER_PERMS
        ),
        (
            "permission.revoked",
            "governance.deploymenttarget",
            str(target.pk),
            {"perm": "governance.deploy_deploymenttarget", "group": "churn-team"},
            None,
        ),
        (
            "owner_group.cleared",
            "registry.registeredmodel",
            model_id,
            {"owner_group": "churn-team"},
            {"owner_group": None},
        ),
        ("group.deleted", *group_key, {"name": "churn-team"}, None),
    ]
    assert [e.subject_repr for e in new.events[2:-1]] == ["reviewers", *["acme/churn"] * 4, "prod", "acme/churn"]
    assert {e.reason for e in new.events[:-1]} == {"group deleted"}
    admin = personas["admin"].user
    assert {(e.actor_username, e.actor_id, e.request_id) for e in new.events} == {("admin", admin.pk, "grp-del-9")}
    assert_chain_verifies()


def test_a_group_owning_many_models_is_deleted_in_as_many_statements_as_one_owning_few(personas):
    owner = personas["owner"].user

    def owning(name: str, models: int) -> Group:
        group = Group.objects.create(name=name)
        for i in range(models):
            registry.model_create(actor=owner, namespace=name, name=f"m{i}", owner_group=name)
        return group

    few, many = owning("few", 2), owning("many", 20)
    counts = {}
    for group, models in ((few, 2), (many, 20)):
        with NewEvents() as new, CaptureQueriesContext(connection) as captured:
            group.delete()
        assert len(new.events) == models * (len(OWNER_PERMS) + 1) + 1  # revoked perms and owner_group, deleted
        inserts = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("INSERT INTO audit_auditevent")]
        assert len(inserts) == 2, inserts  # the cascade's events in one statement, then group.deleted
        counts[group.name] = len(captured.captured_queries)
    assert counts["many"] == counts["few"], counts
    assert not RegisteredModel.objects.filter(owner_group__isnull=False).exists()
    assert_chain_verifies()


def test_deleting_a_user_in_the_admin_records_their_permissions(admin_client, personas, team):  # noqa: F811
    alice = User.objects.create_user(username="alice", password=None)
    alice.user_permissions.add(perm("audit.view_auditevent"))
    model = registry.model_create(actor=alice, namespace="acme", name="fraud")  # its creator holds OWNER_PERMS on it
    assign_perm("auth.view_group", alice, team["group"])  # a generic row (see the module's docstring)
    pk = alice.pk
    with NewEvents() as new:
        response = admin_client.post(f"/admin/auth/user/{pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content[:2000]
    assert not User.objects.filter(pk=pk).exists()
    assert summary(new.events[:-1]) == [
        ("permission.revoked", "auth.user", str(pk), {"user_permissions": ["audit.view_auditevent"]}, None),
        ("permission.revoked", "auth.group", str(team["group"].pk), {"perm": "auth.view_group", "user": "alice"}, None),
        *(
            ("permission.revoked", "registry.registeredmodel", str(model.pk), {"perm": name, "user": "alice"}, None)
            for name in OWNER_PERMS
        ),
    ]
    assert new.events[-1].action == "user.deleted"
    assert {e.reason for e in new.events[:-1]} == {"user deleted"}
    assert {e.actor_username for e in new.events} == {"admin"}
    assert_chain_verifies()


def test_deleting_a_permission_revokes_it_from_every_holder(personas, team):
    """A permission row deleted (a shell; not through a data migration's own model copies: docs/permissions.md):
    model-wide holders and object permissions alike."""
    alice = User.objects.create_user(username="alice", password=None)
    alice.user_permissions.add(perm("registry.request_promotion"))
    Group.objects.get(name="reviewers").permissions.add(perm("registry.request_promotion"))
    model, owner = team["model"], personas["owner"].user
    with NewEvents() as new:
        perm("registry.request_promotion").delete()
    assert summary(new.events) == [
        (
            "permission.revoked",
            "auth.group",
            str(team["reviewers"].pk),
            {"permissions": ["registry.request_promotion"]},
            None,
        ),
        ("permission.revoked", "auth.user", str(alice.pk), {"user_permissions": ["registry.request_promotion"]}, None),
        # model_create gave it to the model's creator and its owner group
        (
            "permission.revoked",
            "registry.registeredmodel",
            str(model.pk),
            {"perm": "registry.request_promotion", "user": "owner"},
            None,
        ),
        (
            "permission.revoked",
            "registry.registeredmodel",
            str(model.pk),
            {"perm": "registry.request_promotion", "group": "churn-team"},
            None,
        ),
    ]
    assert {(e.reason, e.actor_username) for e in new.events} == {("permission deleted", "system")}
    assert not access.has_perm(User.objects.get(pk=owner.pk), "request_promotion", model)
    assert_chain_verifies()


def test_removing_a_deleted_models_permissions_is_audited(personas):
    """A model removed from the code leaves its content type and permissions until remove_stale_contenttypes deletes
    them, with every grant of them; an object permission on one of its rows keeps the row's type and key."""
    stale = ContentType.objects.create(app_label="registry", model="retiredmodel")
    use = Permission.objects.create(content_type=stale, codename="use_retiredmodel", name="Can use retired model")
    reviewers = Group.objects.get(name="reviewers")
    reviewers.permissions.add(use)
    personas["outsider"].user.user_permissions.add(use)
    # granted while the model existed (guardian's save() checks the object's type, which is gone now)
    GroupObjectPermission.objects.bulk_create(
        [GroupObjectPermission(group=reviewers, permission=use, content_type=stale, object_pk="7")]
    )
    with NewEvents() as new:
        call_command("remove_stale_contenttypes", interactive=False, verbosity=0)
    assert not Permission.objects.filter(pk=use.pk).exists()
    name = "registry.use_retiredmodel"
    assert summary(new.events) == [
        ("permission.revoked", "auth.group", str(reviewers.pk), {"permissions": [name]}, None),
        ("permission.revoked", "auth.user", str(personas["outsider"].user.pk), {"user_permissions": [name]}, None),
        ("permission.revoked", "registry.retiredmodel", "7", {"perm": name, "group": "reviewers"}, None),
    ]
    assert (new.events[-1].subject_repr, new.events[-1].reason) == ("", "permission deleted")
    assert_chain_verifies()


def test_deleting_an_object_records_the_object_permissions_it_drops(personas, team):
    model = registry.model_create(
        actor=personas["owner"].user, namespace="acme", name="spare", owner_group="churn-team"
    )
    model_id = str(model.pk)
    with NewEvents() as new:
        model.delete()
    assert summary(new.events) == [
        *(
            ("permission.revoked", "registry.registeredmodel", model_id, {"perm": name, "user": "owner"}, None)
            for name in OWNER_PERMS
        ),
        *(
            ("permission.revoked", "registry.registeredmodel", model_id, {"perm": name, "group": "churn-team"}, None)
            for name in OWNER_PERMS
        ),
    ]
    assert {(e.subject_repr, e.reason) for e in new.events} == {("acme/spare", "registered model deleted")}


def test_a_group_deletion_whose_cascade_cannot_be_recorded_does_not_happen(team, monkeypatch):
    from accounts import signals

    def failing_record_many(events):
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(signals, "record_many", failing_record_many)
    group, model = team["group"], team["model"]
    with NewEvents() as new, pytest.raises(RuntimeError, match="audit log unavailable"), transaction.atomic():
        group.delete()
    assert new.events == []
    assert Group.objects.filter(pk=group.pk).exists()
    assert RegisteredModel.objects.get(pk=model.pk).owner_group_id == group.pk
    assert access.has_perm(User.objects.get(pk=team["carol"].pk), "register_version", model)


def test_record_many_links_events_in_order_across_statements(db, monkeypatch):
    monkeypatch.setattr(audit_services, "RECORD_MANY_BATCH", 3)
    fields = [
        {"action": "test.many", "subject_type": "test", "subject_id": str(n), "actor": "system:test"} for n in range(7)
    ]
    with NewEvents() as new, CaptureQueriesContext(connection) as captured, transaction.atomic():
        returned = audit_services.record_many(fields)
    assert [e.subject_id for e in new.events] == [str(n) for n in range(7)]
    assert [(e.seq, e.hash) for e in returned] == [(e.seq, e.hash) for e in new.events]
    assert len([q for q in captured.captured_queries if q["sql"].startswith("INSERT INTO audit_auditevent")]) == 3
    assert all(e.hash == e.computed_hash() for e in new.events)
    assert_chain_verifies()


def test_a_group_deletion_is_recorded_on_sqlite_too(sqlite_shell):
    """The embedded default links events in Python: the cascade's events join the chain one by one, in order."""
    script = (
        "from django.contrib.auth.models import Group, User\n"
        "from django.core.management import call_command\n"
        "from audit.models import AuditEvent\n"
        "from registry import services\n"
        "group = Group.objects.create(name='team')\n"
        "owner = User.objects.create_user('own')\n"
        "services.model_create(actor=owner, namespace='acme', name='churn', owner_group='team')\n"
        "start = AuditEvent.objects.order_by('-seq').first().seq\n"
        "group.delete()\n"
        "print('actions', [e.action for e in AuditEvent.objects.filter(seq__gt=start).order_by('seq')])\n"
        "call_command('audit_verify')\n"
    )
    printed, _ = sqlite_shell(script)
    assert f"actions {['permission.revoked'] * 4 + ['owner_group.cleared', 'group.deleted']}" in printed
    assert "OK: " in printed


# --- a user's API tokens --------------------------------------------------------------------------------------


def test_deleting_a_user_revokes_their_live_tokens_as_a_revoke_would(personas):
    admin = personas["admin"].user
    dave = User.objects.create_user(username="dave", password=None)
    issued = [
        services.token_create(actor=dave, user=dave, name="ci", scopes=["read", "models:write"]),
        services.token_create(actor=dave, user=dave, name="audit", scopes=["audit:read"], expires_in_days=30),
        services.token_create(actor=dave, user=dave, name="old", scopes=["read"]),
    ]
    with NewEvents() as revoked_by_hand:
        services.token_revoke(actor=admin, token_id=issued[2].token.pk, reason="rotated")
    by_hand = revoked_by_hand.only()
    live = [item.token for item in issued[:2]]
    pk = dave.pk
    acting = context.actor.set(admin)
    try:
        with NewEvents() as new:
            dave.delete()
    finally:
        context.actor.reset(acting)
    assert not ApiToken.objects.filter(user_id=pk).exists()
    assert [e.action for e in new.events] == ["token.revoked", "token.revoked", "user.deleted"]
    revoked = new.events[:2]
    assert [(e.subject_type, e.subject_id, e.subject_repr) for e in revoked] == [
        ("accounts.apitoken", str(token.pk), str(token)) for token in live
    ]
    for event, token in zip(revoked, live, strict=True):
        before, after = payload(event.before), payload(event.after)
        assert set(before) == set(after) == set(payload(by_hand.before)) == set(payload(by_hand.after))
        assert before == {
            "user": "dave",
            "name": token.name,
            "prefix": token.prefix,
            "scopes": token.scopes,
            "expires_at": before["expires_at"],
            "revoked_at": None,
        }
        assert after == {**before, "revoked_at": after["revoked_at"]}
        assert after["revoked_at"] is not None
    assert (payload(revoked[0].before)["expires_at"] is None) != (payload(revoked[1].before)["expires_at"] is None)
    assert {(e.reason, e.actor_username) for e in new.events} == {("user deleted", "admin"), ("", "admin")}
    for event in new.events:
        for item in issued:
            secret = item.plaintext.split("_", 2)[2]
            for text in (event.before, event.after, event.reason, event.subject_repr):
                assert secret not in text and item.token.token_hash not in text
    assert_chain_verifies()


def test_a_user_holding_tokens_is_deleted_in_the_admin_and_each_live_token_is_revoked(admin_client, personas):  # noqa: F811
    """The tokens' admin deletes no token by itself; that must not stop the user's deletion (it answered 403)."""
    erin = User.objects.create_user(username="erin", password=None)
    live = services.token_create(actor=erin, user=erin, name="ci", scopes=["read"]).token
    pk = erin.pk
    page = admin_client.get(f"/admin/auth/user/{pk}/delete/")
    assert page.status_code == 200 and not page.context["perms_lacking"], page.context["perms_lacking"]
    assert b"Api token" in page.content and b'name="post"' in page.content  # listed, and the form is offered
    with NewEvents() as new:
        response = admin_client.post(f"/admin/auth/user/{pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content[:2000]
    assert not User.objects.filter(pk=pk).exists() and not ApiToken.objects.filter(pk=live.pk).exists()
    assert [(e.action, e.subject_id, e.reason) for e in new.events] == [
        ("token.revoked", str(live.pk), "user deleted"),
        ("user.deleted", str(pk), ""),
    ]
    assert {e.actor_username for e in new.events} == {"admin"}
    assert_chain_verifies()


def test_a_token_cannot_be_deleted_on_its_own_in_the_admin(admin_client, personas):  # noqa: F811
    """Only revoked: a deleted token row would leave no record of when it stopped working."""
    erin = User.objects.create_user(username="erin", password=None)
    token = services.token_create(actor=erin, user=erin, name="ci", scopes=["read"]).token
    response = admin_client.post(f"/admin/accounts/apitoken/{token.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert ApiToken.objects.filter(pk=token.pk).exists()


def test_a_user_without_live_tokens_is_deleted_with_no_token_event(personas):
    erin = User.objects.create_user(username="erin", password=None)
    with NewEvents() as new:
        erin.delete()
    assert new.only().action == "user.deleted"


def test_a_user_with_many_tokens_is_deleted_in_as_many_statements_as_one_with_few(db):
    def owning(name: str, tokens: int):
        user = User.objects.create_user(username=name, password=None)
        for i in range(tokens):
            services.token_create(actor=user, user=user, name=f"t{i}", scopes=["read"])
        return user

    owning("warm", 1).delete()  # content types cached, as in a running process
    counts = {}
    for user, tokens in ((owning("few", 2), 2), (owning("many", 20), 20)):
        with NewEvents() as new, CaptureQueriesContext(connection) as captured:
            user.delete()
        assert [e.action for e in new.events] == ["token.revoked"] * tokens + ["user.deleted"]
        inserts = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("INSERT INTO audit_auditevent")]
        assert len(inserts) == 2, inserts  # the tokens' events in one statement, then user.deleted
        counts[user.username] = len(captured.captured_queries)
    assert counts["many"] == counts["few"], counts
    assert_chain_verifies()


def test_a_user_deletion_whose_token_revocations_cannot_be_recorded_does_not_happen(db, monkeypatch):
    from accounts import signals

    def failing_record_many(events):
        raise RuntimeError("audit log unavailable")

    dave = User.objects.create_user(username="dave", password=None)
    token = services.token_create(actor=dave, user=dave, name="ci", scopes=["read"]).token
    monkeypatch.setattr(signals, "record_many", failing_record_many)
    with NewEvents() as new, pytest.raises(RuntimeError, match="audit log unavailable"), transaction.atomic():
        dave.delete()
    assert new.events == []
    assert ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).exists()


# --- guardian's generic tables: the rows naming a deleted object ----------------------------------------------
