"""A task that kills the worker process running it, as the OOM killer or a segfault in a native library would.

Loaded into test workers only (`celery worker --include tests.celery_limits.poison`); each run appends a line to
the file it is given before dying, so the test counts the runs."""

import os
import signal
import time

from celery import shared_task


@shared_task(name="tests.celery_limits.poison.kill_own_process")
def kill_own_process(runs_file: str) -> None:
    with open(runs_file, "a") as runs:
        runs.write("run\n")
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(name="tests.celery_limits.poison.outlive_the_hard_limit")
def outlive_the_hard_limit(runs_file: str) -> None:
    """Ignores its soft time limit (a blocking call that swallows the exception) until the hard limit kills it."""
    from celery.exceptions import SoftTimeLimitExceeded

    with open(runs_file, "a") as runs:
        runs.write("run\n")
    try:
        time.sleep(60)
    except SoftTimeLimitExceeded:
        time.sleep(60)
