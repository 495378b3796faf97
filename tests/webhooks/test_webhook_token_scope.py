"""A webhook is a live copy of the audit log: a token reaches the webhook API only with `audit:read`.

Besides its method's own scope (`read` for GET, `deployments:write` for changes): a token without
`audit:read`, even an administrator's, neither reads delivery payloads (audit events) nor subscribes.
"""

import pytest

from accounts import scopes
from audit.models import AuditEvent
from governance import webhooks
from governance.webhook_models import WebhookEndpoint
from tests.conftest import bearer
from tests.webhooks.conftest import register

pytestmark = pytest.mark.django_db

URL = "/api/v1/webhooks/"


def create(client, **overrides):
    body = {"name": "ci", "url": "https://hooks.example.com/registry", "event_types": ["*"], **overrides}
    return client.post(URL, body, format="json")


def test_every_webhook_operation_needs_audit_read(world, make_token):
    admin = world["admin"]
    hook = create(admin.client()).json()["id"]
    register(world["owner"].user, world["model"], "v1")
    assert webhooks.dispatch().delivery_ids  # a delivery whose payload is the version.registered audit event

    # Without audit:read: the audit log itself refuses, and so does every webhook operation.
    read_only = bearer(make_token(admin.user, [scopes.READ]))
    assert read_only.get("/api/v1/audit/events").status_code == 403
    narrow = bearer(make_token(admin.user, [scopes.READ, scopes.DEPLOYMENTS_WRITE]))
    refused = {
        "list": read_only.get(URL),
        "get": read_only.get(f"{URL}{hook}"),
        "deliveries": read_only.get(f"{URL}{hook}/deliveries"),
        "create": create(narrow, name="exfil", url="https://attacker.example/h"),
        "patch": narrow.patch(f"{URL}{hook}", {"event_types": ["*"], "active": True}, format="json"),
        "rotate": narrow.post(f"{URL}{hook}/rotate-secret", {}, format="json"),
        "delete": narrow.delete(f"{URL}{hook}"),
    }
    for name, r in refused.items():
        assert r.status_code == 403, (name, r.content)
        assert r.json()["error"]["code"] == "insufficient_scope", name
        assert "audit:read" in r.json()["error"]["message"], name
        assert "payload" not in r.content.decode(), name
    assert list(WebhookEndpoint.objects.values_list("name", flat=True)) == ["ci"]
    assert not AuditEvent.objects.filter(action__in=["webhook.updated", "webhook.secret_rotated"]).exists()

    # audit:read does not stand in for the method's own scope: a change still needs deployments:write.
    auditing = bearer(make_token(admin.user, [scopes.READ, scopes.AUDIT_READ]))
    r = auditing.get(f"{URL}{hook}/deliveries")
    assert r.status_code == 200 and r.json()["results"][0]["payload"]["type"] == "version.registered"
    assert auditing.get(f"{URL}{hook}").status_code == 200
    assert create(auditing, name="x").status_code == 403
    assert bearer(make_token(admin.user, [scopes.AUDIT_READ])).get(URL).status_code == 403  # no `read`

    full = bearer(make_token(admin.user, [scopes.READ, scopes.DEPLOYMENTS_WRITE, scopes.AUDIT_READ]))
    assert create(full, name="y").status_code == 201
    assert full.post(f"{URL}{hook}/rotate-secret", {}, format="json").status_code == 200
    assert full.delete(f"{URL}{hook}").status_code == 204


def test_sessions_and_unknown_methods_are_unchanged(world, make_token):
    """A session has no scopes (its permissions bind it); a method the view lacks is still 405, not 403."""
    admin = world["admin"]
    assert create(admin.client()).status_code == 201
    assert admin.client().get(URL).status_code == 200
    assert bearer(make_token(admin.user, [scopes.READ])).put(URL, {}, format="json").status_code == 405
