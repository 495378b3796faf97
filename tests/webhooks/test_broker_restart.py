"""A delivery survives a broker restart: real Redis, a real Celery worker and beat, a real receiver.

The broker is stopped, a web process registers a version (its audit event is the outbox row) and
tries to kick the dispatcher, which fails quietly; the broker comes back and the webhook arrives,
signed, without anyone re-sending anything.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection
from standardwebhooks import Webhook

from governance import webhooks
from governance.webhook_models import WebhookDelivery
from registry import services as registry_services
from tests.webhooks.conftest import register

BASE_DIR = Path(settings.BASE_DIR)
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Redis:
    def __init__(self, port: int, log: Path):
        self.port, self.log, self.proc = port, log, None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install redis-server)"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
        )
        wait(lambda: redis_ping(self.port), 10, "redis to start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        wait(lambda: not redis_ping(self.port), 10, "redis to stop")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def stack(transactional_db, tmp_path):
    """Redis on a free port, a Celery worker and beat pointing at it and at this test's database."""
    if connection.vendor != "postgresql":
        pytest.skip("the worker process shares the test database: run on PostgreSQL (DATABASE_URL)")
    port = free_port()
    redis = Redis(port, tmp_path / "redis.log")
    redis.start()
    db = connection.settings_dict
    user, password = quote(db["USER"] or "", safe=""), quote(db["PASSWORD"] or "", safe="")
    database_url = f"postgres://{user}:{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_DEBUG": "1",
        "SECRET_KEY": settings.SECRET_KEY,  # the worker must decrypt the endpoint secrets
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "WEBHOOK_DISPATCH_INTERVAL_SECONDS": "1",
        "WEBHOOK_SWEEP_INTERVAL_SECONDS": "2",
    }
    env.pop("TEST_DATABASE_NAME", None)
    celery = [sys.executable, "-m", "celery", "-A", "config"]
    worker = subprocess.Popen(
        [*celery, "worker", "-P", "solo", "-l", "info", "-n", f"hooks-{port}@%h"]
        + ["--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=BASE_DIR,
        env=env,
        stdout=(tmp_path / "worker.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    beat = subprocess.Popen(
        [*celery, "beat", "-l", "info", "-s", str(tmp_path / "beat-schedule"), "--pidfile", str(tmp_path / "beat.pid")],
        cwd=BASE_DIR,
        env=env,
        stdout=(tmp_path / "beat.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        yield {"redis": redis, "env": env, "logs": tmp_path}
    finally:
        stop(beat)
        stop(worker)
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
webhooks.kick()  # broker down: must not raise
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

    # The broker goes away; a web process changes state and tries to kick the dispatcher.
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
    assert "could not enqueue governance.tasks.webhooks_dispatch" in web.stderr
    time.sleep(max(0.0, 2 - (time.monotonic() - started)))  # beat ticks at least once into the void
    assert receiver.wait_for(lambda r: r.json()["data"]["after"]["number"] == 2, timeout=0.1) == []

    # The broker comes back (empty: nothing was queued while it was down) and the webhook arrives.
    stack["redis"].start()
    hits = arrived(2)
    assert hits, (stack["logs"] / "worker.log").read_text()[-3000:]
    [hit] = hits
    payload = Webhook(secret).verify(hit.body, hit.headers)
    assert payload["type"] == "version.registered" and payload["data"]["actor"] == "owner"

    deliveries = WebhookDelivery.objects.order_by("event_seq")
    assert [(d.state, d.attempts) for d in deliveries] == [("delivered", 1), ("delivered", 1)]
    assert len(receiver.to("/hook")) == 2  # each exactly once
