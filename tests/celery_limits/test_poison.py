"""A task that kills the worker process running it (the OOM killer, a segfault) is run TASK_MAX_DELIVERIES times, then
rejected unrun with an error in the log and in the metrics. Messages are acknowledged late and re-queued when their
process dies, so such a message came back for good, killing a process each time. Real Redis, a prefork worker."""

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from tests import processes
from tests.celery_limits.conftest import in_log, start_worker
from tests.celery_limits.poison import kill_own_process, outlive_the_hard_limit

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MAX_DELIVERIES = 2


def ended(metrics_port: int, task: str, outcome: str) -> float:
    """The worker's count of `task` runs that ended with `outcome`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "registry_celery_tasks_total" and sample.labels == {"task": task, "outcome": outcome}
    )


def rejected(metrics_port: int) -> float:
    return ended(metrics_port, kill_own_process.name, "rejected")


def test_a_task_that_kills_its_worker_process_is_given_up(redis, tmp_path):
    metrics_port, multiproc = processes.free_port(), tmp_path / "metrics"
    multiproc.mkdir()
    env = processes.service_env(
        redis.url,
        TASK_MAX_DELIVERIES=str(MAX_DELIVERIES),
        WORKER_METRICS_PORT=str(metrics_port),
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
    )
    log, runs = tmp_path / "worker.log", tmp_path / "runs"
    worker = start_worker(
        env, log, "-P", "prefork", "-c", "1", "-n", f"poison-{redis.port}@%h", "-I", "tests.celery_limits.poison"
    )
    try:
        from config.celery import app

        with app.connection_for_write(redis.url) as connection:
            kill_own_process.apply_async((str(runs),), connection=connection)

        processes.wait(in_log(log, "giving up on"), 60, f"the worker to give up\n{processes.tail(log)}")
        assert runs.read_text().count("run") == MAX_DELIVERIES
        assert log.read_text().count("exited with 'signal 9 (SIGKILL)'") == MAX_DELIVERIES
        assert f"its {MAX_DELIVERIES} runs so far never ended" in log.read_text()
        processes.wait(lambda: rejected(metrics_port) == 1, 10, "the rejection in the worker's metrics")

        # Gone: neither queued nor waiting for an acknowledgement, and its count deleted.
        broker = Redis(port=redis.port)
        assert broker.llen("celery") == 0 and broker.hlen("unacked") == 0
        assert broker.keys("registry:deliveries:*") == []
    finally:
        processes.stop(worker)


def test_a_run_killed_at_the_hard_time_limit_is_counted(redis, tmp_path):
    """The worker's main process ends it (its child is killed): no task_postrun comes, so it was in no outcome and
    the documented failure alert could not see it. Counted as outcome `time_limit`, once."""
    metrics_port, multiproc = processes.free_port(), tmp_path / "metrics"
    multiproc.mkdir()
    env = processes.service_env(
        redis.url, WORKER_METRICS_PORT=str(metrics_port), PROMETHEUS_MULTIPROC_DIR=str(multiproc)
    )
    log, runs = tmp_path / "worker.log", tmp_path / "runs"
    worker = start_worker(
        env, log, "-P", "prefork", "-c", "1", "-n", f"hardlimit-{redis.port}@%h", "-I", "tests.celery_limits.poison"
    )
    try:
        from config.celery import app

        with app.connection_for_write(redis.url) as connection:
            outlive_the_hard_limit.apply_async((str(runs),), connection=connection, soft_time_limit=1, time_limit=2)

        processes.wait(in_log(log, "Hard time limit (2"), 60, f"the hard limit\n{processes.tail(log)}")
        name = outlive_the_hard_limit.name
        processes.wait(lambda: ended(metrics_port, name, "time_limit") >= 1, 10, "the run in the worker's metrics")
        time.sleep(1)  # Celery signals a hard limit's failure twice: counted once
        assert ended(metrics_port, name, "time_limit") == 1 and ended(metrics_port, name, "failure") == 0
        assert runs.read_text().count("run") == 1  # acknowledged, not run again
    finally:
        processes.stop(worker)
