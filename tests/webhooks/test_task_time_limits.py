"""Webhook tasks at their soft time limit, in a real prefork worker (the pool that enforces time limits) on a private
Redis: the limit ends a task stuck publishing to the broker instead of being swallowed as a broker error, and an
attempt it cuts short is recorded as the timeout it is, then retried."""

import re
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis as redis_client
from django.db import connection, transaction
from django.db.models.functions import Now

from config.celery import app
from governance import tasks, webhooks
from governance.webhook_models import DeliveryState, WebhookAttempt, WebhookDelivery
from registry import services as registry_services
from tests import processes
from tests.celery_limits.conftest import redis, start_worker  # noqa: F401 - `redis` is a fixture of these tests
from tests.webhooks.conftest import receiver, register  # noqa: F401 - `receiver` is a fixture of these tests

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SOFT = 4  # seconds
PAUSE = 15  # seconds the broker answers nothing: three publishes time out (5 s each) meanwhile
DELIVERIES = WebhookDelivery._meta.db_table


def sweep_now(broker_url: str, **limits):
    """Sent with the time limits a publisher configured like the worker sends (they travel with the message)."""
    with app.connection_for_write(broker_url) as broker:
        return tasks.webhooks_sweep.apply_async(connection=broker, **limits)


def waiting_for_the_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted", [DELIVERIES])
        return cursor.fetchone()[0] > 0


def result_line(log, task_id: str):
    """The worker's line telling how the task ended, once there is one."""
    match = re.search(rf"Task \S+\[{task_id}\] (succeeded|raised|failed)[^\n]*", log.read_text())
    return match and match.group()


def test_a_sweep_stuck_publishing_ends_at_its_soft_time_limit(redis, receiver, tmp_path, django_user_model):  # noqa: F811
    """Three overdue deliveries, then the broker stops answering while the sweeper publishes them. Each publish waits
    for its read timeout (5 s); the soft limit (4 s) arrives inside the first. It was caught with the broker errors,
    so the sweep went on to the next publish and ran until the broker answered or the hard limit killed it. Now it
    ends at the soft limit, and the deliveries wait for the next sweep, which sends each once."""
    admin = django_user_model.objects.create_superuser(username="root", password="pw-root-123456")
    model = registry_services.model_create(actor=admin, namespace="acme", name="churn")
    webhooks.endpoint_create(actor=admin, name="ci", url=receiver.url(), event_types=["version.registered"])
    for n in range(3):
        register(admin, model, f"v{n}")
    assert len(webhooks.dispatch().delivery_ids) == 3
    WebhookDelivery.objects.update(next_attempt_at=Now() - timedelta(hours=1))  # their task was lost

    env = processes.service_env(redis.url, CELERY_TASK_SOFT_TIME_LIMIT=str(SOFT))
    log = tmp_path / "worker.log"
    worker = start_worker(env, log, "-P", "prefork", "-c", "1", "-n", f"sweep-{redis.port}@%h")
    broker = redis_client.Redis(port=redis.port)
    try:
        processes.wait(lambda: "ready." in log.read_text(), 60, f"the worker\n{processes.tail(log)}")
        # The sweep starts (its broker round trips before the body included), then waits on this lock for its query
        # until the broker is silent: then it publishes.
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {DELIVERIES} IN ACCESS EXCLUSIVE MODE")
            sweep = sweep_now(redis.url, soft_time_limit=SOFT, time_limit=SOFT + 60)
            processes.wait(waiting_for_the_lock, 30, f"the sweep to query\n{processes.tail(log)}", interval=0.02)
            broker.execute_command("CLIENT", "PAUSE", PAUSE * 1000)  # answers nothing meanwhile
            started = time.monotonic()
        ended = processes.wait(lambda: result_line(log, sweep.id), 60, f"the sweep to end\n{processes.tail(log)}")
        took = time.monotonic() - started

        assert "raised unexpected: SoftTimeLimitExceeded" in ended, ended
        assert took < PAUSE - 5, (took, ended)  # the limit fires at the hub's next tick: a second or two late
        assert f"Soft time limit ({SOFT}s) exceeded" in log.read_text()
        assert "Hard time limit" not in log.read_text()

        # Nothing lost: once the broker answers again the next sweep sends them, each once.
        time.sleep(max(0, PAUSE - (time.monotonic() - started)))
        processes.wait(lambda: redis_ping(broker), 30, "the broker to answer again")
        sweep_now(redis.url)
        processes.wait(lambda: len(receiver.requests) >= 3, 60, f"three deliveries\n{processes.tail(log)}")
        time.sleep(1)
        assert sorted(r.headers["webhook-id"] for r in receiver.requests) == sorted(
            WebhookDelivery.objects.values_list("webhook_id", flat=True)
        )
    finally:
        processes.stop(worker)


def redis_ping(broker) -> bool:
    try:
        return broker.ping()
    except redis_client.RedisError:
        return False


@pytest.fixture
def slow_receiver():
    """Answers 200, but only after 8 s (or when the test ends)."""
    release = threading.Event()
    hits: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            hits.append(time.monotonic())
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            release.wait(8)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", hits
    release.set()
    server.shutdown()
    server.server_close()


def test_an_attempt_cut_short_by_the_tasks_soft_time_limit_is_recorded_as_a_timeout(
    redis,  # noqa: F811
    slow_receiver,
    tmp_path,
    django_user_model,
):
    """A receiver slower than the task's soft limit, though within the attempt's own deadline (10 s): a publisher
    configured otherwise sent the task with a 2 s limit. The attempt was recorded as "internal error
    (SoftTimeLimitExceeded)", which names no cause; now it is a timeout naming the limit, retried as before."""
    url, hits = slow_receiver
    admin = django_user_model.objects.create_superuser(username="root", password="pw-root-123456")
    model = registry_services.model_create(actor=admin, namespace="acme", name="churn")
    webhooks.endpoint_create(actor=admin, name="slow", url=url, event_types=["version.registered"])
    register(admin, model, "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids

    env = processes.service_env(redis.url, WEBHOOK_TIMEOUT_SECONDS="10", WEBHOOK_RETRY_BASE_SECONDS="600")
    log = tmp_path / "worker.log"
    worker = start_worker(env, log, "-P", "prefork", "-c", "1", "-n", f"slow-{redis.port}@%h")
    try:
        with app.connection_for_write(redis.url) as broker:
            tasks.webhooks_deliver.apply_async((delivery_id,), soft_time_limit=2, time_limit=15, connection=broker)

        attempt = processes.wait(
            lambda: WebhookAttempt.objects.filter(delivery_id=delivery_id).first(),
            60,
            f"an attempt\n{processes.tail(log)}",
        )
        assert attempt.error == (
            "timed out: the delivery task's time limit (2 s) passed; an attempt may take WEBHOOK_TIMEOUT_SECONDS (10 s)"
        )
        assert 1500 <= attempt.duration_ms < 6000, (
            attempt.duration_ms
        )  # cut at the limit, not when the receiver answered
        assert (attempt.status_code, attempt.response_excerpt) == (None, "")
        delivery = WebhookDelivery.objects.get(pk=delivery_id)
        assert (delivery.state, delivery.attempts, delivery.last_error) == (DeliveryState.PENDING, 1, attempt.error)
        assert WebhookDelivery.objects.filter(pk=delivery_id, next_attempt_at__gt=Now()).exists()  # retried later
        assert len(hits) == 1
        text = log.read_text()
        assert "Soft time limit (2s) exceeded" in text
        assert "internal error" not in text and "unexpected error while attempting" not in text
        processes.wait(lambda: re.search(r"webhooks_deliver\[\S+\] succeeded", log.read_text()), 20, "the task's end")
        assert "Hard time limit" not in log.read_text()
    finally:
        processes.stop(worker)
