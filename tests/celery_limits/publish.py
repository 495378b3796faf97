"""A task that enqueues a reconcile (`governance.deployment._enqueue`, as release_fail does once it commits) while the
broker holds every write (CLIENT PAUSE WRITE: the publish waits for an answer that does not come), under a short
soft time limit, then notes that it went on past the publish. Only writes are held, so the worker's main process,
which enforces the time limits, goes on talking to the broker.

Loaded into test workers only (`celery worker --include tests.celery_limits.publish`)."""

from pathlib import Path

import redis
from celery import shared_task

from governance import deployment

SOFT, HARD = 2, 8
PAUSE_MS = 20_000  # longer than the publish's socket timeout (5 s): the soft limit strikes first


@shared_task(name="tests.celery_limits.publish.enqueue_on_a_silent_broker", soft_time_limit=SOFT, time_limit=HARD)
def enqueue_on_a_silent_broker(broker_url: str, target_id: int, went_on: str) -> None:
    redis.Redis.from_url(broker_url).client_pause(PAUSE_MS, all=False)  # the test unpauses it
    deployment._enqueue(target_id)
    Path(went_on).write_text("the task went on past the publish\n")
