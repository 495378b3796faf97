"""Periodic runs are dropped when they waited too long in the queue, judged by the broker's clock alone.

Celery's `expires` is a time of day by the publisher's (beat's) clock, compared by the worker with its own: a worker
whose clock ran more than the allowance (two dispatch intervals) ahead of beat's host dropped every webhook dispatch,
and one behind ran runs long stale. Real Redis, beat and worker processes; the worker's clock is moved with
time-machine."""

import time

import pytest

from config.celery import MAX_AGE_HEADER
from governance import tasks, webhooks
from governance.webhook_models import WebhookDelivery
from registry import services as registry_services
from tests import processes
from tests.celery_limits.conftest import in_log, start_worker
from tests.webhooks.conftest import register

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

AHEAD = 120.0  # seconds; the dispatch allowance is 2 s here


def test_a_worker_whose_clock_runs_ahead_of_beat_still_dispatches_webhooks(
    redis, tmp_path, receiver, django_user_model
):
    env = processes.service_env(redis.url, WEBHOOK_DISPATCH_INTERVAL_SECONDS="1", WEBHOOK_SWEEP_INTERVAL_SECONDS="60")
    log = tmp_path / "worker.log"
    worker = start_worker(env, log, "-P", "solo", "-n", f"ahead-{redis.port}@%h", clock_offset=AHEAD)
    beat = processes.start_beat(env, tmp_path)
    try:
        admin = django_user_model.objects.create_superuser(username="root", password="pw-root-123456")
        model = registry_services.model_create(actor=admin, namespace="acme", name="churn")
        webhooks.endpoint_create(actor=admin, name="receiver", url=receiver.url(), event_types=["version.registered"])
        register(admin, model, "v1")

        hits = receiver.wait_for(lambda r: r.json()["type"] == "version.registered", timeout=30)
        assert hits, f"{processes.tail(log)}\n{processes.tail(tmp_path / 'beat.log')}"
        # The worker signed it by its own clock: proof that it runs ahead.
        assert int(hits[0].headers["webhook-timestamp"]) - time.time() > AHEAD - 10
        assert "skipping" not in log.read_text()

        # Beat's runs still carry their max age: those queued while no worker ran are skipped (by the broker's clock).
        processes.stop(worker)
        time.sleep(3)
        worker = start_worker(env, log, "-P", "solo", "-n", f"ahead2-{redis.port}@%h", clock_offset=AHEAD)
        skipped = in_log(log, "skipping governance.tasks.webhooks_dispatch")
        processes.wait(skipped, 30, f"the stale runs to be skipped\n{processes.tail(log)}")
    finally:
        processes.stop(beat)
        processes.stop(worker)


def test_a_run_that_waited_longer_than_its_max_age_is_skipped_whatever_the_workers_clock(
    redis, tmp_path, django_user_model
):
    """The worker's clock runs behind: by its own clock the stale run would look fresh."""
    admin = django_user_model.objects.create_superuser(username="root", password="pw-root-123456")
    model = registry_services.model_create(actor=admin, namespace="acme", name="churn")
    webhooks.endpoint_create(
        actor=admin, name="nobody", url="http://127.0.0.1:9/hook", event_types=["version.registered"]
    )
    register(admin, model, "v1")
    from config.celery import app

    def dispatch():
        with app.connection_for_write(redis.url) as connection:
            tasks.webhooks_dispatch.apply_async(connection=connection, headers={MAX_AGE_HEADER: 1})

    dispatch()
    time.sleep(1.5)  # no worker yet: the run waits longer than its max age
    log = tmp_path / "worker.log"
    env = processes.service_env(redis.url)
    worker = start_worker(env, log, "-P", "solo", "-n", f"behind-{redis.port}@%h", clock_offset=-AHEAD)
    try:
        skipped = in_log(log, "skipping governance.tasks.webhooks_dispatch")
        processes.wait(skipped, 30, f"the stale run to be skipped\n{processes.tail(log)}")
        assert not WebhookDelivery.objects.exists()  # the stale run did nothing

        dispatch()  # a fresh one runs
        processes.wait(WebhookDelivery.objects.exists, 30, f"a delivery\n{processes.tail(log)}")
        assert log.read_text().count("skipping") == 1
    finally:
        processes.stop(worker)
