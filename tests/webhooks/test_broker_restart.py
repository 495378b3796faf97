"""A delivery survives a broker restart: real Redis, a real Celery worker and beat, a real receiver.

The broker is stopped, a web process registers a version (its audit event is the outbox row; the write
never touches the broker), beat's dispatch runs go nowhere; the broker comes back and the webhook
arrives, signed, without anyone re-sending anything.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from standardwebhooks import Webhook

from governance import webhooks
from governance.webhook_models import WebhookDelivery
from registry import services as registry_services
from tests import processes
from tests.webhooks.conftest import register

BASE_DIR = Path(settings.BASE_DIR)
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(transactional_db, tmp_path):
    """Redis on a free port, a Celery worker and beat pointing at it and at this test's database."""
    processes.require_postgresql()
    redis = processes.Redis(processes.free_port(), tmp_path / "redis.log")
    redis.start()
    env = processes.service_env(redis.url, WEBHOOK_DISPATCH_INTERVAL_SECONDS="1", WEBHOOK_SWEEP_INTERVAL_SECONDS="2")
    worker = processes.start_worker(env, tmp_path / "worker.log", f"hooks-{redis.port}@%h")
    beat = processes.start_beat(env, tmp_path)
    try:
        yield {"redis": redis, "env": env, "logs": tmp_path}
    finally:
        processes.stop(beat)
        processes.stop(worker)
        redis.stop()


WEB_PROCESS = """
import django
django.setup()
from django.contrib.auth import get_user_model
from governance import webhooks
from registry.models import RegisteredModel
from tests.webhooks.conftest import register
owner = get_user_model().objects.get(pk={owner})
version = register(owner, RegisteredModel.objects.get(pk={model}), "v2")
print("registered", version.number)
"""


def test_a_delivery_survives_a_broker_restart(stack, receiver, django_user_model):
    admin = django_user_model.objects.create_superuser(username="root", password="pw-root-123456")
    owner = django_user_model.objects.create_user(username="owner", password="pw-owner-123456")
    model = registry_services.model_create(actor=owner, namespace="acme", name="churn")
    _, secret = webhooks.endpoint_create(
        actor=admin, name="receiver", url=receiver.url(), event_types=["version.registered"]
    )

    def arrived(number):
        return receiver.wait_for(lambda r: r.json()["data"]["after"]["number"] == number, timeout=25)

    # The pipeline works: beat -> dispatch -> deliver.
    register(owner, model, "v1")
    assert arrived(1), (stack["logs"] / "worker.log").read_text()[-3000:]

    # The broker goes away; a web process changes state, which needs no broker.
    stack["redis"].stop()
    started = time.monotonic()
    web = subprocess.run(
        [sys.executable, "-c", WEB_PROCESS.format(owner=owner.pk, model=model.pk)],
        cwd=BASE_DIR,
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert web.returncode == 0, web.stderr
    assert "registered 2" in web.stdout
    assert "could not enqueue" not in web.stderr
    time.sleep(max(0.0, 2 - (time.monotonic() - started)))  # beat ticks at least once into the void
    assert receiver.wait_for(lambda r: r.json()["data"]["after"]["number"] == 2, timeout=0.1) == []

    # The broker comes back (empty: nothing was queued while it was down) and the webhook arrives.
    stack["redis"].start()
    hits = arrived(2)
    assert hits, (stack["logs"] / "worker.log").read_text()[-3000:]
    [hit] = hits
    payload = Webhook(secret).verify(hit.body, hit.headers)
    assert payload["type"] == "version.registered" and payload["data"]["actor"] == "owner"

    # The worker records the outcome after the receiver has answered: wait for that write.
    def outcomes():
        return [(d.state, d.attempts) for d in WebhookDelivery.objects.order_by("event_seq")]

    deadline = time.monotonic() + 10
    while outcomes() != [("delivered", 1), ("delivered", 1)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outcomes() == [("delivered", 1), ("delivered", 1)]
    assert len(receiver.to("/hook")) == 2  # each exactly once
