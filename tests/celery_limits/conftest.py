"""Celery workers at their limits: a private Redis, real worker processes (prefork where time limits and lost
worker processes are the point), and workers whose clock runs ahead of beat's."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests import processes
from tests.webhooks.conftest import receiver  # noqa: F401 - a fixture of these tests too

WORKER_FLAGS = ["-l", "info", "--without-gossip", "--without-mingle", "--without-heartbeat"]


@pytest.fixture
def redis(transactional_db, tmp_path):
    processes.require_postgresql()
    server = processes.Redis(processes.free_port(), tmp_path / "redis.log")
    server.start()
    yield server
    server.stop()


def start_worker(env: dict, log: Path, *args: str, clock_offset: float = 0.0) -> subprocess.Popen:
    """`celery -A config worker *args`; with `clock_offset`, in a process whose wall clock runs that many seconds
    ahead of this machine's (behind if negative: tests/celery_limits/skewed.py)."""
    if clock_offset:
        command = [sys.executable, "-m", "tests.celery_limits.skewed", str(clock_offset)]
    else:
        command = [sys.executable, "-m", "celery"]
    command += ["-A", "config", "worker", *WORKER_FLAGS, *args]
    return subprocess.Popen(command, cwd=processes.BASE_DIR, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)


def in_log(log: Path, text: str):
    return lambda: text in log.read_text()
