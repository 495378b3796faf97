"""A task's soft time limit reached while it publishes a reconcile to a broker that does not answer ends the task:
`_enqueue` swallows broker errors (the periodic reconcile covers a lost kick), but it swallowed SoftTimeLimitExceeded
too, and the task ran on past its soft limit, towards the hard one. Real Redis (holding writes, CLIENT PAUSE WRITE, from
the task itself, so the publish is under way when the limit strikes), a prefork worker (the pool that enforces time
limits).
That broker errors are still swallowed: tests/webhooks/test_queues.py."""

import time

import pytest
from redis import Redis

from tests import processes
from tests.celery_limits.conftest import in_log, start_worker
from tests.celery_limits.publish import SOFT, enqueue_on_a_silent_broker

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_soft_time_limit_during_a_publish_ends_the_task(redis, tmp_path):
    env = processes.service_env(redis.url)
    log, went_on = tmp_path / "worker.log", tmp_path / "went-on"
    worker = start_worker(
        env, log, "-P", "prefork", "-c", "1", "-n", f"publish-{redis.port}@%h", "-I", "tests.celery_limits.publish"
    )
    try:
        # Past the worker's first event-loop tick, whose writes (kombu's binding refresh and sweep) the pause held too:
        # its main process, which sends the soft limit, waited the socket timeout (5 s) with them.
        processes.wait(in_log(log, "ready."), 60, f"the worker to start\n{processes.tail(log)}")
        time.sleep(2)
        from config.celery import app

        with app.connection_for_write(redis.url) as connection:
            enqueue_on_a_silent_broker.apply_async((redis.url, 1, str(went_on)), connection=connection)

        processes.wait(in_log(log, f"Soft time limit ({SOFT}s) exceeded"), 30, f"the soft limit\n{processes.tail(log)}")
    finally:
        Redis(port=redis.port).client_unpause()
    try:
        ended = ("raised unexpected", "succeeded in")
        processes.wait(lambda: any(e in log.read_text() for e in ended), 30, f"the task to end\n{processes.tail(log)}")
        text = log.read_text()
        assert "raised unexpected: SoftTimeLimitExceeded" in text, processes.tail(log)
        assert not went_on.exists(), "the task went on past the publish its soft time limit interrupted"
        assert "could not enqueue reconcile" not in text
        assert "Hard time limit" not in text
    finally:
        processes.stop(worker)
