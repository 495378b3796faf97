"""Redelivering a failed delivery, and a receiver answering 410 Gone (Standard Webhooks: disable the endpoint).

Real HTTP receiver on localhost, the real delivery function; the redelivery's task runs through Celery (eagerly,
in this process) once the request's transaction commits.
"""

import pytest
from standardwebhooks import Webhook

from accounts import scopes
from audit.models import AuditEvent
from config.celery import app as celery_app
from governance import webhooks
from governance.webhook_models import DeliveryState, WebhookDelivery, WebhookEndpoint
from tests.conftest import bearer
from tests.webhooks.conftest import register
from tests.webhooks.test_delivery import wait_until_due
from tests.webhooks.test_review_fixes import Holder, needs_postgres, run_into

pytestmark = pytest.mark.django_db

URL = "/api/v1/webhooks/"
RECEIVER_TOKEN = "s3cr3t-receiver-token"  # noqa: S105 - a receiver's credential in its URL, never audited


def create(client, url: str, name: str = "ci") -> dict:
    r = client.post(URL, {"name": name, "url": url, "event_types": ["version.registered"]}, format="json")
    assert r.status_code == 201, r.content
    return r.json()


def redeliver_path(hook: int, delivery_id: int) -> str:
    return f"{URL}{hook}/deliveries/{delivery_id}/redeliver"


@pytest.fixture
def eager_tasks():
    """Tasks sent by the code under test run at once, in this process (the webhooks_deliver task for real)."""
    saved = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = saved


def fail_for_good(delivery_id: int) -> WebhookDelivery:
    """Attempt the delivery until it is no longer pending (the receiver is scripted to fail)."""
    for _ in range(20):
        webhooks.deliver(delivery_id=delivery_id)
        delivery = WebhookDelivery.objects.get(pk=delivery_id)
        if delivery.state != DeliveryState.PENDING:
            return delivery
        wait_until_due(delivery)
    raise AssertionError("still pending")


def failed_delivery(world, receiver, settings) -> tuple[int, int]:
    """(endpoint id, delivery id) of a delivery of `version.registered` that failed for good: its endpoint's
    receiver answers 500, and one attempt is all a delivery gets."""
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    hook = create(world["admin"].client(), receiver.url("/down"))["id"]
    receiver.script["/down"] = [500]
    register(world["owner"].user, world["model"], "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids
    fail_for_good(delivery_id)
    return hook, delivery_id


# --- redelivery ------------------------------------------------------------------------------------


def test_a_failed_delivery_is_sent_again_with_the_same_webhook_id_and_a_fresh_budget(
    world, receiver, settings, eager_tasks, django_capture_on_commit_callbacks
):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.02
    settings.WEBHOOK_MAX_ATTEMPTS = 2
    admin = world["admin"]
    path = f"/flaky?token={RECEIVER_TOKEN}"
    created = create(admin.client(), receiver.url(path))
    hook, secret = created["id"], created["secret"]
    receiver.script[path] = [500, 500, 503]  # the two attempts of the first round, the first of the second
    register(world["owner"].user, world["model"], "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids
    failed = fail_for_good(delivery_id)
    assert (failed.state, failed.attempts, failed.last_status) == ("failed", 2, 500)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        r = admin.client().post(redeliver_path(hook, delivery_id))
    assert r.status_code == 202, r.content
    body = r.json()
    assert (body["id"], body["state"], body["attempts"]) == (delivery_id, "pending", 0)
    assert body["next_attempt_at"] is not None and body["webhook_id"] == failed.webhook_id
    assert len(callbacks) == 1  # the task is sent once the redelivery is committed, not before

    # The task ran: the third POST, answered 503, is the first attempt of a fresh round, so it is retried.
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("pending", 1, 503)
    wait_until_due(delivery)
    assert webhooks.deliver(delivery_id=delivery_id).state == DeliveryState.DELIVERED

    hits = receiver.to(path)
    assert len(hits) == 4
    assert {h.headers["webhook-id"] for h in hits} == {failed.webhook_id}  # receivers de-duplicate on it
    assert {h.body for h in hits} == {hits[0].body}
    Webhook(secret).verify(hits[-1].body, hits[-1].headers)  # signed afresh, with the endpoint's secret
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("delivered", 2)
    assert list(delivery.attempt_log.values_list("number", "status_code")) == [(1, 500), (2, 500), (3, 503), (4, 200)]

    [event] = AuditEvent.objects.filter(action="webhook.redelivered")
    assert (event.actor_username, event.subject_type, event.subject_id) == (
        "admin",
        "governance.webhookendpoint",
        str(hook),
    )
    audited = f"{event.before} {event.after} {event.reason} {event.subject_repr}"
    assert f'"delivery":{delivery_id}' in event.after and '"event_type":"version.registered"' in event.after
    assert failed.webhook_id in event.after and '"attempts":2' in event.before
    assert RECEIVER_TOKEN not in audited and "127.0.0.1" not in audited and secret.removeprefix("whsec_") not in audited


def test_only_a_failed_delivery_of_an_active_endpoint_is_redelivered(world, receiver, settings):
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    admin = world["admin"].client()
    hook = create(admin, receiver.url("/down"))["id"]
    other = create(admin, receiver.url("/other"), name="other")["id"]
    receiver.script["/down"] = [500]
    register(world["owner"].user, world["model"], "v1")
    register(world["owner"].user, world["model"], "v2")
    first, second, other_first, other_second = (
        WebhookDelivery.objects.filter(pk__in=webhooks.dispatch().delivery_ids)
        .order_by("endpoint_id", "event_seq")
        .values_list("pk", flat=True)
    )
    assert fail_for_good(first).state == "failed"
    assert webhooks.deliver(delivery_id=other_first).state == "delivered"

    def refused(path, status, code):
        r = admin.post(path)
        assert r.status_code == status, r.content
        assert r.json()["error"]["code"] == code
        return r.json()["error"]["message"]

    assert "only a failed delivery" in refused(redeliver_path(hook, second), 409, "delivery_pending").lower()
    assert "only a failed delivery" in refused(redeliver_path(other, other_first), 409, "already_delivered")
    # Another endpoint's delivery, or none: 404, as for an endpoint that does not exist.
    refused(redeliver_path(other, first), 404, "not_found")
    refused(redeliver_path(hook, 10**17), 404, "not_found")
    refused(redeliver_path(10**17, first), 404, "not_found")

    webhooks.endpoint_update(actor=world["admin"].user, endpoint=WebhookEndpoint.objects.get(pk=hook), active=False)
    message = refused(redeliver_path(hook, first), 409, "endpoint_inactive")
    assert "Activate it first" in message
    assert not AuditEvent.objects.filter(action="webhook.redelivered").exists()
    assert WebhookDelivery.objects.get(pk=first).state == "failed"
    assert WebhookDelivery.objects.get(pk=other_second).state == "pending"  # untouched


def test_redelivering_needs_what_every_other_webhook_change_needs(world, receiver, settings, make_token):
    admin = world["admin"]
    path = redeliver_path(*failed_delivery(world, receiver, settings))

    for persona in ("owner", "reviewer", "auditor", "ci_bot", "outsider"):
        r = world[persona].client().post(path)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden"), persona
    for scope_list in ([scopes.READ, scopes.DEPLOYMENTS_WRITE], [scopes.READ, scopes.AUDIT_READ]):
        r = bearer(make_token(admin.user, scope_list)).post(path)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "insufficient_scope"), scope_list
    assert not AuditEvent.objects.filter(action="webhook.redelivered").exists()

    full = bearer(make_token(admin.user, [scopes.READ, scopes.DEPLOYMENTS_WRITE, scopes.AUDIT_READ]))
    assert full.post(path).status_code == 202


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_redelivery_racing_a_deactivation_waits_for_it_and_is_refused(world, receiver, settings):
    admin = world["admin"]
    hook, delivery_id = failed_delivery(world, receiver, settings)
    endpoint = WebhookEndpoint.objects.get(pk=hook)

    holder = Holder(lambda: webhooks.endpoint_update(actor=admin.user, endpoint=endpoint, active=False))
    holder.start_and_wait()
    worker = run_into(holder, lambda: admin.client().post(redeliver_path(hook, delivery_id)))
    assert holder.error is None and worker.error is None, (holder.error, worker.error)
    assert worker.result.status_code == 409, worker.result.content
    assert worker.result.json()["error"]["code"] == "endpoint_inactive"
    assert WebhookDelivery.objects.get(pk=delivery_id).state == "failed"
    assert worker.waited, "the redelivery did not wait for the deactivation"


# --- 410 Gone --------------------------------------------------------------------------------------


def test_410_gone_fails_the_delivery_at_once_and_deactivates_the_endpoint(world, receiver, settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.01
    settings.WEBHOOK_MAX_ATTEMPTS = 5
    admin, owner = world["admin"], world["owner"].user
    path = f"/gone?token={RECEIVER_TOKEN}"
    hook = create(admin.client(), receiver.url(path))["id"]
    receiver.script[path] = [410]
    register(owner, world["model"], "v1")
    register(owner, world["model"], "v2")
    first, second = sorted(webhooks.dispatch().delivery_ids)

    outcome = webhooks.deliver(delivery_id=first)
    assert (outcome.state, outcome.status, outcome.attempt, outcome.retry_in) == ("failed", 410, 1, None)
    endpoint = WebhookEndpoint.objects.get(pk=hook)
    assert endpoint.active is False
    [event] = AuditEvent.objects.filter(action="webhook.updated")
    assert (event.actor_username, event.reason) == ("system:webhooks", "receiver answered 410 Gone")
    assert '"active":true' in event.before and '"active":false' in event.after
    assert RECEIVER_TOKEN not in f"{event.before} {event.after}"  # the URL redacted, as in every webhook event

    # The other pending delivery goes as when an operator deactivates: abandoned at its attempt, nothing sent.
    abandoned = webhooks.deliver(delivery_id=second)
    assert (abandoned.state, abandoned.status) == ("failed", None)
    assert "inactive" in abandoned.error
    register(owner, world["model"], "v3")
    assert webhooks.dispatch().delivery_ids == []  # and nothing new is queued for it
    assert len(receiver.to(path)) == 1

    # Once the receiver is back and the endpoint activated again, the 410'd delivery can be sent again.
    admin.client().patch(f"{URL}{hook}", {"active": True}, format="json")
    assert admin.client().post(redeliver_path(hook, first)).status_code == 202
    assert webhooks.deliver(delivery_id=first).state == DeliveryState.DELIVERED
    assert len(receiver.to(path)) == 2


def test_a_410_on_an_endpoint_already_inactive_writes_no_second_audit_event(world, receiver):
    admin = world["admin"]
    hook = create(admin.client(), receiver.url("/gone"))["id"]
    receiver.script["/gone"] = [410, 410]
    register(world["owner"].user, world["model"], "v1")
    register(world["owner"].user, world["model"], "v2")
    ids = sorted(webhooks.dispatch().delivery_ids)
    # Both claimed (and POSTed) while the endpoint was active: two attempts in flight when the first 410 comes.
    claimed = [webhooks._claim(i) for i in ids]
    results = [webhooks._attempt(c, c.endpoint) for c in claimed]
    assert [r.status for r in results] == [410, 410]
    outcomes = [webhooks._finish(c, c.endpoint, r, c.created_at, 5) for c, r in zip(claimed, results, strict=True)]
    assert [o.state for o in outcomes] == ["failed", "failed"]
    assert WebhookEndpoint.objects.get(pk=hook).active is False
    assert AuditEvent.objects.filter(action="webhook.updated", reason="receiver answered 410 Gone").count() == 1


def test_a_redelivered_deliverys_retries_wait_as_a_new_ones_do(world, receiver, settings):
    """A fresh round's first retry waits 15-30 s (base 30, jittered), as a new delivery's does: it waited the
    1 h cap, the backoff read from the attempts numbered across rounds."""
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.001
    settings.WEBHOOK_MAX_ATTEMPTS = 10
    admin = world["admin"]
    created = create(admin.client(), receiver.url("/flaky"))
    receiver.script["/flaky"] = [500] * 10 + [503]
    register(world["owner"].user, world["model"], "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids
    assert fail_for_good(delivery_id).attempts == 10

    settings.WEBHOOK_RETRY_BASE_SECONDS, settings.WEBHOOK_RETRY_MAX_SECONDS = 30.0, 3600.0
    assert admin.client().post(redeliver_path(created["id"], delivery_id)).status_code == 202
    outcome = webhooks.deliver(delivery_id=delivery_id)

    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert (delivery.state, delivery.attempts, delivery.attempt_log.count()) == (DeliveryState.PENDING, 1, 11)
    assert 15 <= outcome.retry_in <= 30
