"""Real processes for end-to-end tests: a private Redis, Celery worker and beat, a gunicorn web server.

Each points at this test's PostgreSQL database (the test must use `transactional_db`, so what it writes
is committed and visible to the other processes) and at a broker of its own, so concurrent test runs on
one machine never consume each other's tasks.
"""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

BASE_DIR = Path(settings.BASE_DIR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll until `predicate()` is truthy and return its value; fail the test naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Redis:
    """A private redis-server on its own port (no persistence), startable and stoppable."""

    def __init__(self, port: int, log: Path):
        self.port, self.log, self.proc = port, log, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

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


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    """Send `sig` (SIGTERM: a graceful stop); kill the process if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def require_postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.fail("end-to-end tests share the test database with other processes: run on PostgreSQL")


def test_database_url() -> str:
    db = connection.settings_dict
    user, password = quote(db["USER"] or "", safe=""), quote(db["PASSWORD"] or "", safe="")
    return f"postgres://{user}:{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def service_env(broker_url: str, **extra: str) -> dict[str, str]:
    """The environment of a web or worker process sharing this test's database, keys and files."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_DEBUG": "1",
        "SECRET_KEY": settings.SECRET_KEY,  # the processes must decrypt what this one encrypted
        "DATABASE_URL": test_database_url(),
        "CELERY_BROKER_URL": broker_url,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    env.pop("TEST_DATABASE_NAME", None)
    return env


def start_worker(env: dict, log: Path, name: str, *, pool: str = "solo", concurrency: int = 1) -> subprocess.Popen:
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", pool, "-l", "info", "-n", name]
    if pool != "solo":
        command += ["-c", str(concurrency)]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)


def start_beat(env: dict, workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "info", "-s", str(workdir / "beat-schedule"),
         "--pidfile", str(workdir / "beat.pid")],
        cwd=BASE_DIR,
        env=env,
        stdout=(workdir / "beat.log").open("a"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def start_web(env: dict, log: Path, port: int, *flags: str) -> subprocess.Popen:
    """gunicorn, the production server (its settings from gunicorn.conf.py), with two workers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "-w", "2", *flags],
        cwd=BASE_DIR,
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )

    def up():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):  # noqa: S310 - local
                return True
        except OSError:
            assert proc.poll() is None, f"gunicorn exited: {log.read_text()[-3000:]}"
            return False

    wait(up, 60, "gunicorn to answer /healthz", interval=0.2)
    return proc


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} missing)"


def _sqlite_run(data_dir: Path, db_file: Path, *args: str) -> str:
    """`manage.py ARGS` on the SQLite database `db_file` (the embedded default) in a process of its own;
    it must succeed. Returns what it printed."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{db_file}",
        "DJANGO_DEBUG": "1",
        "DATA_DIR": str(data_dir),
        "CELERY_BROKER_URL": "filesystem://",
    }
    done = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), *args], env=env, cwd=BASE_DIR, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def migrated_sqlite(directory: Path) -> Path:
    """A freshly migrated SQLite database in `directory` (the session makes one; tests run on copies)."""
    db_file = directory / "registry.sqlite3"
    _sqlite_run(directory / "data", db_file, "migrate", "--noinput")
    return db_file


def sqlite_shell(tmp_path: Path, script: str, migrated: Path) -> tuple[str, Path]:
    """Run `script` with `manage.py shell -c` on a copy of the freshly migrated SQLite database `migrated`;
    it must succeed. Returns what it printed and the database file."""
    db_file = tmp_path / "registry.sqlite3"
    source, copy = sqlite3.connect(migrated), sqlite3.connect(db_file)
    try:
        source.backup(copy)  # a consistent copy, WAL included
    finally:
        source.close()
        copy.close()
    return _sqlite_run(tmp_path / "data", db_file, "shell", "-c", script), db_file
