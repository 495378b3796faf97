"""REST API for webhooks: admins only, the secret shown once, never again (API, audit, logs)."""

import logging
import time

import pytest
from django.contrib.auth.models import Permission
from standardwebhooks import Webhook

from accounts import scopes
from audit.models import AuditEvent
from governance import webhooks
from tests.conftest import bearer
from tests.webhooks.conftest import register

pytestmark = pytest.mark.django_db

URL = "/api/v1/webhooks/"


def create(client, **overrides):
    body = {"name": "ci", "url": "https://hooks.example.com/registry", "event_types": ["promotion.*"], **overrides}
    return client.post(URL, body, format="json")


def test_create_returns_the_secret_once_and_never_again(world, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    admin = world["admin"].client()
    r = create(admin, url=receiver.url(), event_types=["version.registered", "promotion.approved"])
    assert r.status_code == 201, r.json()
    created = r.json()
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert created["event_types"] == ["promotion.approved", "version.registered"]
    assert created["active"] is True and created["created_by"] == "admin"
    hook = created["id"]

    register(world["owner"].user, world["model"], "v1")
    webhooks.deliver(delivery_id=webhooks.dispatch().delivery_ids[0])
    [got] = receiver.to("/hook")
    Webhook(secret).verify(got.body, got.headers)  # the secret from the response signs deliveries

    responses = [
        admin.get(URL),
        admin.get(f"{URL}{hook}"),
        admin.get(f"{URL}{hook}/deliveries"),
        admin.patch(f"{URL}{hook}", {"description": "for CI"}, format="json"),
    ]
    assert [x.status_code for x in responses] == [200, 200, 200, 200]
    raw_secret = secret.removeprefix("whsec_")
    for response in responses:
        assert "secret" not in response.json() and raw_secret not in response.content.decode()
    for event in AuditEvent.objects.all():
        assert raw_secret not in f"{event.before} {event.after} {event.reason} {event.subject_repr}"
    assert AuditEvent.objects.filter(action="webhook.created").count() == 1
    assert raw_secret not in caplog.text
    assert "webhook delivery" in caplog.text  # the log did record the delivery, just not the secret


def test_deliveries_list_shows_each_attempt(world, receiver, settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.01
    admin = world["admin"].client()
    hook = create(admin, url=receiver.url("/flaky"), event_types=["*"]).json()["id"]
    receiver.script["/flaky"] = [502]
    register(world["owner"].user, world["model"], "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids
    webhooks.deliver(delivery_id=delivery_id)

    r = admin.get(f"{URL}{hook}/deliveries")
    [item] = r.json()["results"]
    assert (item["state"], item["attempts"], item["last_status"]) == ("pending", 1, 502)
    assert item["next_attempt_at"] is not None
    assert item["payload"]["type"] == "version.registered"
    assert [a["status_code"] for a in item["attempt_log"]] == [502]

    time.sleep(0.05)
    webhooks.deliver(delivery_id=delivery_id)
    item = admin.get(f"{URL}{hook}/deliveries?state=delivered").json()["results"][0]
    assert (item["state"], item["attempts"], item["next_attempt_at"]) == ("delivered", 2, None)
    assert [a["status_code"] for a in item["attempt_log"]] == [502, 200]
    assert admin.get(f"{URL}{hook}/deliveries?state=failed").json()["results"] == []
    assert admin.get(f"{URL}{hook}/deliveries?state=bogus").status_code == 400


def test_only_admins_manage_webhooks(world, make_token):
    owner = world["owner"]
    assert create(owner.client()).status_code == 403
    assert owner.client().get(URL).status_code == 403
    hook = create(world["admin"].client()).json()["id"]
    for client in (owner.client(), world["reviewer"].client(), world["auditor"].client()):
        assert client.get(f"{URL}{hook}").status_code == 403
        assert client.get(f"{URL}{hook}/deliveries").status_code == 403
        assert client.delete(f"{URL}{hook}").status_code == 403
    assert bearer("mgr_nope_notatokenatall12345").get(URL).status_code == 401

    # A non-superuser needs governance.manage_webhooks and audit.view_auditevent (tests/webhooks/test_review_fixes.py).
    owner.user.user_permissions.add(
        Permission.objects.get(codename="manage_webhooks"), Permission.objects.get(codename="view_auditevent")
    )
    assert owner.client().get(URL).status_code == 200
    assert create(owner.client(), name="owner-hook").status_code == 201

    # Tokens: reads need read, writes need deployments:write, and every operation audit:read
    # (tests/webhooks/test_webhook_token_scope.py).
    admin_user = world["admin"].user
    read_only = bearer(make_token(admin_user, [scopes.READ, scopes.AUDIT_READ]))
    assert read_only.get(URL).status_code == 200
    assert create(read_only, name="x").status_code == 403
    assert read_only.delete(f"{URL}{hook}").status_code == 403
    writer = bearer(make_token(admin_user, [scopes.READ, scopes.DEPLOYMENTS_WRITE, scopes.AUDIT_READ]))
    assert create(writer, name="y").status_code == 201


def test_validation_update_and_delete(world):
    admin = world["admin"].client()
    assert create(admin, event_types=["promotion.exploded"]).status_code == 400
    assert create(admin, event_types=[]).status_code == 400
    assert create(admin, event_types=["model.*"]).status_code == 400  # not a webhook event group
    assert create(admin, url="ftp://example.com/x").status_code == 400
    assert create(admin, url="https://user:pw@example.com/x").status_code == 400
    assert create(admin, surprise=1).status_code == 400
    r = create(admin, event_types=["*"])
    assert r.status_code == 201
    hook = r.json()["id"]
    assert create(admin).json()["error"]["code"] == "already_exists"

    r = admin.patch(f"{URL}{hook}", {"active": False, "event_types": ["release.*"]}, format="json")
    assert r.status_code == 200
    assert (r.json()["active"], r.json()["event_types"]) == (False, ["release.*"])
    assert admin.patch(f"{URL}{hook}", {"secret_encrypted": "x"}, format="json").status_code == 400
    updated = AuditEvent.objects.get(action="webhook.updated")
    assert "secret" not in updated.after

    assert admin.delete(f"{URL}{hook}").status_code == 204
    assert admin.get(f"{URL}{hook}").status_code == 404
    assert admin.delete(f"{URL}{hook}").status_code == 404
    assert AuditEvent.objects.filter(action="webhook.deleted", subject_id=str(hook)).exists()


def test_an_edit_of_a_stale_read_is_a_412_and_a_retry_of_one_made_is_a_200(world):
    """event_types is sent whole: an admin adding `release.*` to what they read would drop the `version.*` another
    admin added since. With If-Match the stale edit is refused and nothing is written or audited."""
    admin = world["admin"].client()
    hook = create(admin, url="https://hooks.example.com/x", event_types=["promotion.*"]).json()["id"]
    read = admin.get(f"{URL}{hook}")
    etag = read["ETag"]
    first = admin.patch(
        f"{URL}{hook}", {"event_types": ["promotion.*", "version.*"]}, format="json", HTTP_IF_MATCH=etag
    )
    assert first.status_code == 200 and first["ETag"] != etag and first["ETag"] == admin.get(f"{URL}{hook}")["ETag"]
    events = AuditEvent.objects.count()
    stale = admin.patch(
        f"{URL}{hook}", {"event_types": ["promotion.*", "release.*"]}, format="json", HTTP_IF_MATCH=etag
    )
    assert stale.status_code == 412 and "Webhook ci changed since you read it" in stale.json()["error"]["message"]
    assert admin.get(f"{URL}{hook}").json()["event_types"] == ["promotion.*", "version.*"]
    assert AuditEvent.objects.count() == events
    retried = admin.patch(
        f"{URL}{hook}", {"event_types": ["promotion.*", "version.*"]}, format="json", HTTP_IF_MATCH=etag
    )
    assert retried.status_code == 200 and AuditEvent.objects.count() == events  # already so: nothing to do
    url_changed = admin.patch(f"{URL}{hook}", {"url": "https://hooks.example.com/y"}, format="json")
    assert url_changed.status_code == 200 and url_changed["ETag"] != first["ETag"]


def test_a_name_or_description_holding_a_secret_is_refused(world):
    """Names and descriptions are listed, logged and audited for good: a webhook secret or token pasted into one
    is a 400, on create and on change, and nothing is written."""
    admin = world["admin"].client()
    secret = create(admin).json()["secret"]
    events = AuditEvent.objects.count()
    for body in ({"name": f"ci {secret}"}, {"description": f"signed with {secret}"}):
        refused = create(admin, **{"name": "other", **body})
        assert refused.status_code == 400 and "looks like a secret" in refused.json()["error"]["message"], body
        assert secret.removeprefix("whsec_") not in refused.content.decode()
    hook = admin.get(URL).json()["results"][0]["id"]
    changed = admin.patch(f"{URL}{hook}", {"description": f"https://bot:pw@hooks.example.com {secret}"}, format="json")
    assert changed.status_code == 400 and list(changed.json()["error"]["detail"]) == ["description"]
    assert AuditEvent.objects.count() == events and [h["name"] for h in admin.get(URL).json()["results"]] == ["ci"]
