"""Rotating an endpoint's signing secret: POST /api/v1/webhooks/{id}/rotate-secret.

Receivers verify with the `standardwebhooks` package (and the ordering of the signatures by hand): during the
grace period a delivery carries one signature per secret, the new one first, so a receiver holding either
verifies it; after it only the new secret does, and the old one is dropped from the database.
"""

import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from accounts import scopes
from audit.models import AuditEvent
from core.errors import InvalidInput
from governance import webhooks
from governance.webhook_models import DeliveryState, WebhookEndpoint
from tests.conftest import bearer
from tests.webhooks.conftest import register

pytestmark = pytest.mark.django_db

URL = "/api/v1/webhooks/"
DAY = 24 * 3600


def create(client, receiver, **overrides) -> dict:
    body = {"name": "ci", "url": receiver.url(), "event_types": ["version.registered"], **overrides}
    r = client.post(URL, body, format="json")
    assert r.status_code == 201, r.content
    return r.json()


def rotate(client, hook: int, body=None):
    return client.post(f"{URL}{hook}/rotate-secret", body, format="json")


def deliver_next(receiver, world, seed: str):
    """Register a version and deliver its event; the request the receiver got."""
    register(world["owner"].user, world["model"], seed)
    [delivery_id] = webhooks.dispatch().delivery_ids
    assert webhooks.deliver(delivery_id=delivery_id).state == DeliveryState.DELIVERED
    return receiver.to("/hook")[-1]


def verifies(secret: str, got) -> bool:
    try:
        Webhook(secret).verify(got.body, got.headers)
    except WebhookVerificationError:
        return False
    return True


def signatures(got) -> list[str]:
    return got.headers["webhook-signature"].split(" ")


def signed_by(secret: str, got) -> str:
    at = datetime.fromtimestamp(int(got.headers["webhook-timestamp"]), tz=UTC)
    return Webhook(secret).sign(got.headers["webhook-id"], at, got.body.decode())


def test_both_secrets_verify_during_the_grace_period_then_only_the_new_one(world, receiver):
    admin = world["admin"].client()
    created = create(admin, receiver)
    old = created["secret"]

    r = rotate(admin, created["id"], {"grace_period_seconds": 2})
    assert r.status_code == 200, r.content
    new = r.json()["secret"]
    assert new.startswith("whsec_") and new != old
    assert r.json()["previous_secret_expires_at"] is not None

    got = deliver_next(receiver, world, "v1")
    assert signatures(got) == [signed_by(new, got), signed_by(old, got)]  # the new secret's first
    assert verifies(new, got) and verifies(old, got)

    # A delivery created during the grace period but attempted after it: the database's clock says the previous
    # secret is over even before the dispatcher has dropped it.
    register(world["owner"].user, world["model"], "v2")
    [pending] = webhooks.dispatch().delivery_ids
    time.sleep(2.2)
    endpoint = WebhookEndpoint.objects.get(pk=created["id"])
    assert endpoint.previous_secret_encrypted  # still at rest
    assert webhooks.deliver(delivery_id=pending).state == DeliveryState.DELIVERED
    got = receiver.to("/hook")[-1]
    assert signatures(got) == [signed_by(new, got)]
    assert verifies(new, got) and not verifies(old, got)

    webhooks.dispatch()  # beat runs it every few seconds: it drops the expired secret
    endpoint.refresh_from_db()
    assert (endpoint.previous_secret_encrypted, endpoint.previous_secret_expires_at) == ("", None)
    assert admin.get(f"{URL}{created['id']}").json()["previous_secret_expires_at"] is None
    got = deliver_next(receiver, world, "v3")
    assert verifies(new, got) and not verifies(old, got)


def test_default_grace_is_a_day_answer_is_not_cached_and_the_secret_is_never_audited_or_logged(world, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    admin = world["admin"].client()
    created = create(admin, receiver)
    hook, old = created["id"], created["secret"]

    before = datetime.now(UTC)
    r = rotate(admin, hook)  # no body: the default grace period
    assert r.status_code == 200, r.content
    assert "no-store" in r["Cache-Control"]  # the one answer holding the secret: no cache keeps a copy
    body = r.json()
    new = body["secret"]
    ends = datetime.fromisoformat(body["previous_secret_expires_at"].replace("Z", "+00:00"))
    assert before + timedelta(seconds=DAY - 60) < ends < before + timedelta(seconds=DAY + 60)
    assert {k: body[k] for k in ("id", "name", "url")} == {"id": hook, "name": "ci", "url": receiver.url()}

    [event] = AuditEvent.objects.filter(action="webhook.secret_rotated")
    assert (event.actor_username, event.subject_id) == ("admin", str(hook))
    assert '"grace_period_seconds":86400' in event.after

    got = deliver_next(receiver, world, "v1")
    assert verifies(new, got) and verifies(old, got)

    shown = admin.get(f"{URL}{hook}")
    assert shown.json()["previous_secret_expires_at"] == body["previous_secret_expires_at"]
    assert "secret" not in shown.json()
    for secret in (old, new):
        raw = secret.removeprefix("whsec_")
        assert raw not in shown.content.decode()
        for e in AuditEvent.objects.all():
            assert raw not in f"{e.before} {e.after} {e.reason} {e.subject_repr}"
        assert raw not in caplog.text
    assert "secret rotated" in caplog.text


def test_creation_answer_is_not_cached_either(world, receiver):
    r = world["admin"].client().post(URL, {"name": "ci", "url": receiver.url(), "event_types": ["*"]}, format="json")
    assert r.status_code == 201 and "no-store" in r["Cache-Control"]


def test_grace_zero_ends_the_old_secret_at_once(world, receiver):
    admin = world["admin"].client()
    created = create(admin, receiver)
    r = rotate(admin, created["id"], {"grace_period_seconds": 0})
    assert r.status_code == 200, r.content
    assert r.json()["previous_secret_expires_at"] is None
    endpoint = WebhookEndpoint.objects.get(pk=created["id"])
    assert endpoint.previous_secret_encrypted == ""

    got = deliver_next(receiver, world, "v1")
    assert len(signatures(got)) == 1
    assert verifies(r.json()["secret"], got) and not verifies(created["secret"], got)


def test_rotating_again_during_the_grace_period_ends_the_first_secret(world, receiver):
    admin = world["admin"].client()
    created = create(admin, receiver)
    first = created["secret"]
    second = rotate(admin, created["id"]).json()["secret"]
    third = rotate(admin, created["id"]).json()["secret"]

    got = deliver_next(receiver, world, "v1")
    assert signatures(got) == [signed_by(third, got), signed_by(second, got)]
    assert verifies(third, got) and verifies(second, got) and not verifies(first, got)
    assert AuditEvent.objects.filter(action="webhook.secret_rotated").count() == 2


def test_the_previous_secret_stays_encrypted_at_rest(world, receiver):
    admin = world["admin"].client()
    created = create(admin, receiver)
    rotate(admin, created["id"])
    endpoint = WebhookEndpoint.objects.get(pk=created["id"])
    raw = created["secret"].removeprefix("whsec_")
    assert raw not in endpoint.previous_secret_encrypted
    assert webhooks.decrypt_secret(endpoint.previous_secret_encrypted) == created["secret"]


@pytest.mark.parametrize(
    "body",
    [{"grace_period_seconds": -1}, {"grace_period_seconds": DAY + 1}, {"grace_period_seconds": "soon"}, {"x": 1}],
    ids=["negative", "longer than a day", "not a number", "unknown field"],
)
def test_bad_input_is_refused_with_400_and_changes_nothing(world, receiver, body):
    admin = world["admin"].client()
    created = create(admin, receiver)
    stored = WebhookEndpoint.objects.get(pk=created["id"]).secret_encrypted
    events = AuditEvent.objects.count()

    r = rotate(admin, created["id"], body)
    assert r.status_code == 400, r.content
    field = next(iter(body))
    assert field in r.json()["error"]["message"]
    assert WebhookEndpoint.objects.get(pk=created["id"]).secret_encrypted == stored
    assert AuditEvent.objects.count() == events


def test_the_service_refuses_a_grace_period_out_of_range(world, receiver):
    created = create(world["admin"].client(), receiver)
    endpoint = WebhookEndpoint.objects.get(pk=created["id"])
    with pytest.raises(InvalidInput, match="grace_period_seconds"):
        webhooks.endpoint_rotate_secret(actor=world["admin"].user, endpoint=endpoint, grace_period_seconds=DAY + 1)


def test_rotation_is_checked_like_every_other_webhook_change(world, receiver, make_token):
    admin, owner = world["admin"], world["owner"]
    created = create(admin.client(), receiver)
    stored = WebhookEndpoint.objects.get(pk=created["id"]).secret_encrypted

    owner.user.user_permissions.add(Permission.objects.get(codename="manage_webhooks"))
    refused = rotate(owner.client(), created["id"])
    assert refused.status_code == 403 and "audit.view_auditevent" in refused.json()["error"]["message"]
    read_only = rotate(bearer(make_token(admin.user, [scopes.READ])), created["id"])
    assert read_only.status_code == 403, read_only.content
    assert rotate(admin.client(), 999999).status_code == 404
    assert WebhookEndpoint.objects.get(pk=created["id"]).secret_encrypted == stored
    assert not AuditEvent.objects.filter(action="webhook.secret_rotated").exists()


def test_rotating_recovers_an_endpoint_whose_key_was_lost(world, receiver, settings):
    """SECRET_KEY changed without SECRET_KEY_FALLBACKS: setting the url again and rotating brings it back."""
    key_a, key_b = "key-a-" + "a" * 50, "key-b-" + "b" * 50
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = key_a, []
    admin = world["admin"].client()
    created = create(admin, receiver)

    settings.SECRET_KEY = key_b  # key_a lost
    register(world["owner"].user, world["model"], "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids
    outcome = webhooks.deliver(delivery_id=delivery_id)
    assert outcome.status is None and "cannot decrypt the endpoint secret or url" in outcome.error
    listed = admin.get(URL)
    assert listed.status_code == 200 and listed.json()["results"][0]["url"] == ""  # a listing still answers

    assert admin.patch(f"{URL}{created['id']}", {"url": receiver.url()}, format="json").status_code == 200
    r = rotate(admin, created["id"])
    assert r.status_code == 200, r.content
    assert r.json()["previous_secret_expires_at"] is None  # the old secret cannot sign: nothing to keep
    got = deliver_next(receiver, world, "v2")
    assert signatures(got) == [signed_by(r.json()["secret"], got)]
    assert verifies(r.json()["secret"], got)
