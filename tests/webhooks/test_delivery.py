"""Dispatch from the audit log, Standard Webhooks signatures, retries and the delivery log.

Services run for real against a real HTTP receiver on localhost; no broker is involved here (the
Celery path is exercised end to end in test_broker_restart.py).
"""

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from datetime import timedelta

import pytest
import time_machine
from cryptography.fernet import InvalidToken
from django.db import connection, transaction
from django.db.models.functions import Now
from django.utils import timezone
from standardwebhooks import Webhook, WebhookVerificationError

from audit.services import record
from governance import services as governance_services
from governance import webhooks
from governance.webhook_models import DeliveryState, WebhookCursor, WebhookDelivery, WebhookEndpoint
from tests.webhooks.conftest import register

pytestmark = pytest.mark.django_db


def make_endpoint(admin, url, event_types=("*",), name="hook", **kwargs):
    return webhooks.endpoint_create(actor=admin, name=name, url=url, event_types=list(event_types), **kwargs)


def deliver_all() -> list:
    outcomes = []
    for delivery_id in webhooks.dispatch().delivery_ids:
        outcomes.append(webhooks.deliver(delivery_id=delivery_id))
    return outcomes


def wait_until_due(delivery: WebhookDelivery) -> None:
    delivery.refresh_from_db()
    time.sleep(max(0.0, (delivery.next_attempt_at - timezone.now()).total_seconds()) + 0.01)


def by_hand_signature(secret: str, headers: dict, body: bytes) -> str:
    """The Standard Webhooks rule, written out independently of the library."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def test_signature_verifies_with_the_standard_webhooks_library(world, receiver):
    admin, owner = world["admin"].user, world["owner"].user
    endpoint, secret = make_endpoint(admin, receiver.url(), ["version.registered"])
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32

    version = register(owner, world["model"], "v1")
    [outcome] = deliver_all()
    assert outcome.state == DeliveryState.DELIVERED and outcome.status == 200

    [got] = receiver.to("/hook")
    headers = got.headers  # names lower-cased by the receiver (HTTP header names are case-insensitive)
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"].startswith("msg_")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    payload = Webhook(secret).verify(got.body, headers)  # raises unless the signature is valid
    assert headers["webhook-signature"] == by_hand_signature(secret, headers, got.body)

    assert payload["type"] == "version.registered"
    data = payload["data"]
    assert data["action"] == "version.registered"
    assert data["subject"] == {"type": "registry.modelversion", "id": str(version.pk), "repr": str(version)}
    assert data["actor"] == "owner"
    assert data["after"]["digest"] == version.digest
    assert payload["timestamp"].endswith("Z") and isinstance(data["seq"], int)

    # Tampering with the body, a wrong secret or a stale timestamp all fail verification.
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(got.body.replace(b"churn", b"churm"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.generate_secret()).verify(got.body, headers)
    stale = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 600)}
    stale["webhook-signature"] = by_hand_signature(secret, stale, got.body)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(got.body, stale)

    delivery = WebhookDelivery.objects.get()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 200)
    assert delivery.webhook_id == headers["webhook-id"] and delivery.delivered_at is not None
    [attempt] = delivery.attempt_log.all()
    assert attempt.status_code == 200 and attempt.error == "" and attempt.response_excerpt == "ok"


def test_retries_with_backoff_after_500_then_succeeds(world, receiver, settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.2
    admin, owner = world["admin"].user, world["owner"].user
    make_endpoint(admin, receiver.url("/flaky"), ["version.*"])
    receiver.script["/flaky"] = [500, 503]

    register(owner, world["model"], "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids
    first = webhooks.deliver(delivery_id=delivery_id)
    assert (first.state, first.status, first.attempt) == ("pending", 500, 1)
    assert 0.1 <= first.retry_in <= 0.2  # step 1: base, jittered into [base/2, base]

    # Not due yet: a second worker (or a duplicate task) finds nothing to claim.
    assert webhooks.deliver(delivery_id=delivery_id) is None
    assert len(receiver.to("/flaky")) == 1

    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    wait_until_due(delivery)
    second = webhooks.deliver(delivery_id=delivery_id)
    assert (second.state, second.status, second.attempt) == ("pending", 503, 2)
    assert 0.2 <= second.retry_in <= 0.4  # step 2: doubled

    wait_until_due(delivery)
    third = webhooks.deliver(delivery_id=delivery_id)
    assert (third.state, third.status, third.attempt, third.retry_in) == ("delivered", 200, 3, None)

    hits = receiver.to("/flaky")
    assert len(hits) == 3
    assert len({h.headers["webhook-id"] for h in hits}) == 1  # one message id across retries
    assert len({h.body for h in hits}) == 1  # the same bytes every time
    assert hits[1].at - hits[0].at >= 0.1 and hits[2].at - hits[1].at >= 0.2  # waited as scheduled
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.last_status, delivery.last_error) == ("delivered", 3, 200, "")
    log = list(delivery.attempt_log.values_list("number", "status_code"))
    assert log == [(1, 500), (2, 503), (3, 200)]
    assert "HTTP 500" in delivery.attempt_log.get(number=1).error
    assert delivery.attempt_log.get(number=1).response_excerpt == "receiver says no"
    assert webhooks.deliver(delivery_id=delivery_id) is None  # delivered is final


def test_permanently_failing_endpoint_ends_failed_with_every_attempt_logged(world, receiver, settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.02
    settings.WEBHOOK_MAX_ATTEMPTS = 4
    admin, owner = world["admin"].user, world["owner"].user
    make_endpoint(admin, receiver.url("/down"), ["*"], name="down")
    receiver.script["/down"] = [500] * 100
    # A second endpoint where nothing listens: connection refused is a failed attempt too.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    make_endpoint(admin, f"http://127.0.0.1:{dead_port}/nobody", ["*"], name="nobody")

    register(owner, world["model"], "v1")
    ids = webhooks.dispatch().delivery_ids
    assert len(ids) == 2
    for delivery_id in ids:
        for _ in range(10):
            outcome = webhooks.deliver(delivery_id=delivery_id)
            if outcome and outcome.state == DeliveryState.FAILED:
                break
            wait_until_due(WebhookDelivery.objects.get(pk=delivery_id))
        assert outcome.state == DeliveryState.FAILED and outcome.attempt == 4 and outcome.retry_in is None

    down = WebhookDelivery.objects.get(endpoint__name="down")
    assert (down.state, down.attempts, down.last_status) == ("failed", 4, 500)
    assert [(a.number, a.status_code) for a in down.attempt_log.all()] == [(n, 500) for n in (1, 2, 3, 4)]
    assert len(receiver.to("/down")) == 4

    nobody = WebhookDelivery.objects.get(endpoint__name="nobody")
    assert (nobody.state, nobody.attempts, nobody.last_status) == ("failed", 4, None)
    attempts = list(nobody.attempt_log.all())
    assert [a.number for a in attempts] == [1, 2, 3, 4]
    assert all(a.status_code is None and "refused" in a.error.lower() for a in attempts)
    assert all(a.duration_ms >= 0 and a.at is not None for a in attempts)

    assert webhooks.deliver(delivery_id=down.pk) is None  # failed is final
    assert webhooks.due_deliveries(grace_seconds=0) == []  # and the sweeper leaves it alone


def test_events_fan_out_only_to_subscribed_endpoints(world, receiver):
    admin, owner, reviewer = world["admin"].user, world["owner"].user, world["reviewer"].user
    target = world["target"]
    make_endpoint(admin, receiver.url("/promotions"), ["promotion.*"], name="promotions")
    make_endpoint(admin, receiver.url("/versions"), ["version.registered"], name="versions")
    make_endpoint(admin, receiver.url("/decisions"), ["promotion.approved", "promotion.rejected"], name="decisions")
    make_endpoint(admin, receiver.url("/releases"), ["release.live", "release.rolled_back"], name="releases")
    make_endpoint(admin, receiver.url("/all"), ["*"], name="all")
    make_endpoint(admin, receiver.url("/off"), ["*"], name="off", active=False)

    v1 = register(owner, world["model"], "v1")
    v2 = register(owner, world["model"], "v2")
    v3 = register(owner, world["model"], "v3")
    p1 = governance_services.promotion_request(actor=owner, version=v1, target=target)
    governance_services.promotion_approve(actor=reviewer, request_id=p1.pk, comment="ship it")
    p2 = governance_services.promotion_request(actor=owner, version=v2, target=target)
    governance_services.promotion_reject(actor=reviewer, request_id=p2.pk, comment="metrics regressed")
    p3 = governance_services.promotion_request(actor=owner, version=v3, target=target)
    governance_services.promotion_cancel(actor=owner, request_id=p3.pk, reason="wrong version")
    with transaction.atomic():  # the deployment engine writes these through the same audit.record()
        record(action="release.started", subject_type="governance.release", subject_id=1, actor="system:reconciler")
        record(action="release.live", subject_type="governance.release", subject_id=1, actor="system:reconciler")

    outcomes = deliver_all()
    assert outcomes and all(o.state == DeliveryState.DELIVERED for o in outcomes)

    def types(path):
        return [r.json()["type"] for r in receiver.to(path)]

    promotion_types = [
        "promotion.requested",
        "promotion.approved",
        "promotion.requested",
        "promotion.rejected",
        "promotion.requested",
        "promotion.cancelled",
    ]
    assert sorted(types("/promotions")) == sorted(promotion_types)
    assert types("/versions") == ["version.registered"] * 3
    assert sorted(types("/decisions")) == ["promotion.approved", "promotion.rejected"]
    assert types("/releases") == ["release.live"]
    everything = ["version.registered"] * 3 + promotion_types + ["release.started", "release.live"]
    assert sorted(types("/all")) == sorted(everything)
    assert types("/off") == []
    # Audit events that are not webhook events (model.created, promotion.approval, release.created, ...)
    # are never sent; every delivery's seq points at the audit event it carries.
    for delivery in WebhookDelivery.objects.all():
        assert delivery.event_type in webhooks.EVENT_TYPES
        assert json.loads(delivery.body)["data"]["seq"] == delivery.event_seq
    rejected = next(r.json() for r in receiver.to("/decisions") if r.json()["type"] == "promotion.rejected")
    assert rejected["data"]["reason"] == "metrics regressed"
    assert rejected["data"]["subject"]["id"] == str(p2.pk)


def test_an_endpoint_gets_only_events_after_its_creation_and_each_once(world, receiver):
    admin, owner = world["admin"].user, world["owner"].user
    register(owner, world["model"], "before")
    make_endpoint(admin, receiver.url(), ["version.registered"])
    register(owner, world["model"], "after")
    assert len(deliver_all()) == 1
    assert webhooks.dispatch().delivery_ids == []  # the cursor moved past both events
    [hit] = receiver.to("/hook")
    assert hit.json()["data"]["after"]["number"] == 2


def test_sweeper_finds_deliveries_whose_task_was_lost(world, receiver):
    admin, owner = world["admin"].user, world["owner"].user
    make_endpoint(admin, receiver.url(), ["*"])
    register(owner, world["model"], "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids  # created; pretend its task never reached a worker
    assert webhooks.due_deliveries(grace_seconds=60) == []  # a task may still be on its way
    assert webhooks.due_deliveries(grace_seconds=0) == [delivery_id]
    webhooks.deliver(delivery_id=delivery_id)
    assert webhooks.due_deliveries(grace_seconds=0) == []


def test_the_databases_clock_decides_when_a_delivery_is_due(world, receiver):
    """Due times are stamped and compared with the database's clock, not each worker's. A dispatcher ten
    minutes ahead made its deliveries wait ten minutes for every other worker; a worker ten minutes ahead
    claimed a delivery another worker was attempting (its lease run out by the fast clock) and sent it twice."""
    admin, owner = world["admin"].user, world["owner"].user
    make_endpoint(admin, receiver.url(), ["*"])
    register(owner, world["model"], "v1")
    ten_minutes_ahead = timezone.now() + timedelta(minutes=10)
    with time_machine.travel(ten_minutes_ahead):
        [delivery_id] = webhooks.dispatch().delivery_ids
    assert webhooks.due_deliveries(grace_seconds=0) == [delivery_id]  # due at once for a worker on time

    # A worker is attempting it: its claim holds the delivery for a lease, by the database's clock.
    WebhookDelivery.objects.filter(pk=delivery_id).update(
        next_attempt_at=Now() + timedelta(seconds=webhooks.lease_seconds())
    )
    with time_machine.travel(ten_minutes_ahead):
        assert webhooks.deliver(delivery_id=delivery_id) is None
        assert webhooks.due_deliveries(grace_seconds=0) == []
    assert receiver.requests == []

    # Its lease run out (the worker died mid-attempt), any worker sends it, once.
    WebhookDelivery.objects.filter(pk=delivery_id).update(next_attempt_at=Now())
    with time_machine.travel(ten_minutes_ahead):
        outcome = webhooks.deliver(delivery_id=delivery_id)
    assert (outcome.state, outcome.attempt) == (DeliveryState.DELIVERED, 1)
    assert len(receiver.to("/hook")) == 1


def test_inactive_endpoint_stops_pending_deliveries(world, receiver):
    admin, owner = world["admin"].user, world["owner"].user
    endpoint, _ = make_endpoint(admin, receiver.url(), ["*"])
    register(owner, world["model"], "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids
    webhooks.endpoint_update(actor=admin, endpoint=endpoint, active=False)
    outcome = webhooks.deliver(delivery_id=delivery_id)
    assert outcome.state == DeliveryState.FAILED and "inactive" in outcome.error
    assert receiver.requests == []


def test_secret_is_encrypted_at_rest_and_survives_key_rotation(world, settings):
    admin = world["admin"].user
    endpoint, secret = make_endpoint(admin, "https://hooks.example.com/x")
    stored = WebhookEndpoint.objects.get(pk=endpoint.pk).secret_encrypted
    assert secret not in stored and secret[6:] not in stored
    assert webhooks.decrypt_secret(stored) == secret
    old_key = settings.SECRET_KEY
    settings.SECRET_KEY = "a-new-secret-key-" + "x" * 40
    settings.SECRET_KEY_FALLBACKS = [old_key]
    assert webhooks.decrypt_secret(stored) == secret
    settings.SECRET_KEY_FALLBACKS = []
    with pytest.raises(InvalidToken):
        webhooks.decrypt_secret(stored)


def test_retry_delay_grows_exponentially_with_jitter_and_a_cap(settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 10
    settings.WEBHOOK_RETRY_MAX_SECONDS = 100
    for attempt, step in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (9, 100)]:
        delays = [webhooks.retry_delay(attempt) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert webhooks.retry_delay(1, retry_after=60) == 60  # Retry-After honoured
    assert webhooks.retry_delay(1, retry_after=10_000) == 100  # but capped


@pytest.mark.django_db(transaction=True)
def test_concurrent_dispatchers_never_create_a_delivery_twice(personas):
    if connection.vendor != "postgresql":
        pytest.skip("row locks across threads need PostgreSQL")
    admin = personas["admin"].user
    make_endpoint(admin, "https://hooks.example.com/a", name="a")
    make_endpoint(admin, "https://hooks.example.com/b", name="b")
    for i in range(40):
        with transaction.atomic():
            record(action="release.live", subject_type="governance.release", subject_id=i, actor="test")

    errors, created = [], []

    def run():
        try:
            while True:
                result = webhooks.dispatch(batch_size=3)
                created.extend(result.delivery_ids)
                if not result.delivery_ids and not result.more:
                    break
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(created) == len(set(created)) == 80
    assert WebhookDelivery.objects.count() == 80


def test_cursor_past_the_end_of_a_reset_audit_log_starts_over(world, receiver):
    admin, owner = world["admin"].user, world["owner"].user
    make_endpoint(admin, receiver.url(), ["version.registered"])
    webhooks.dispatch()
    WebhookCursor.objects.filter(pk=1).update(last_seq=10**9)  # as after restoring an older database
    register(owner, world["model"], "v1")
    assert len(deliver_all()) == 1
    assert len(receiver.to("/hook")) == 1
