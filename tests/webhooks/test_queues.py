"""The broker connection is bounded, and webhook deliveries have a queue of their own: real Redis, a real
worker, and a receiver that accepts connections and never answers."""

import contextlib
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.conf import settings

from governance import deployment_tasks, tasks, webhooks
from registry import services as registry_services
from tests import processes
from tests.webhooks.conftest import register

BASE_DIR = Path(settings.BASE_DIR)
pytestmark = pytest.mark.slow


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections and never answers: a broker behind a dead NAT entry, a receiver
    that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


ENQUEUE = """
import django, time
django.setup()
from governance import deployment
started = time.monotonic()
deployment._enqueue(1)
print("returned after", round(time.monotonic() - started), "s")
"""


@pytest.mark.django_db
def test_an_enqueue_on_a_broker_that_never_answers_gives_up(silent_port):
    """Without read timeouts on the broker connection a publish waited for good: an approval's request thread
    (and beat) hung. Now the enqueue gives up, logs, and the periodic reconcile picks the target up."""
    env = processes.service_env(f"redis://127.0.0.1:{silent_port}/0")
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", ENQUEUE], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert "returned after" in done.stdout, output[-3000:]
    assert "could not enqueue reconcile of target 1; the periodic reconcile will" in output


def test_other_work_is_not_held_behind_webhook_deliveries(transactional_db, tmp_path, django_user_model, silent_port):
    """Six deliveries to a receiver that never answers (each attempt times out after 2 s), then other work: a
    worker taking both queues fetches from them in turn, so the other task runs after at most one delivery more,
    not after all six (one queue, first in first out, held deployments and rollbacks back)."""
    processes.require_postgresql()
    redis = processes.Redis(processes.free_port(), tmp_path / "redis.log")
    redis.start()
    env = processes.service_env(redis.url, WEBHOOK_TIMEOUT_SECONDS="2")
    log = tmp_path / "worker.log"
    worker = processes.start_worker(env, log, f"queues-{redis.port}@%h")
    try:
        admin = django_user_model.objects.create_superuser(username="root", password="pw-root-123456")
        model = registry_services.model_create(actor=admin, namespace="acme", name="churn")
        webhooks.endpoint_create(
            actor=admin, name="hangs", url=f"http://127.0.0.1:{silent_port}/hook", event_types=["version.registered"]
        )
        for n in range(6):
            register(admin, model, f"v{n}")
        from config.celery import app

        with app.connection_for_write(redis.url) as connection:
            deliveries = webhooks.dispatch().delivery_ids
            assert len(deliveries) == 6
            for delivery_id in deliveries:
                tasks.webhooks_deliver.apply_async((delivery_id,), connection=connection)
            deployment_tasks.expire_promotions.apply_async(connection=connection)

        def received():
            return re.findall(r"Task (\S+?)\[", log.read_text())

        order = processes.wait(lambda: "governance.deployment_tasks.expire_promotions" in received() and received(),
                               60, "the other task to run")  # fmt: skip
        before = order[: order.index("governance.deployment_tasks.expire_promotions")]
        assert before.count("governance.tasks.webhooks_deliver") <= 2, order
    finally:
        processes.stop(worker)
        redis.stop()
