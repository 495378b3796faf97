"""Closing the terminal (or losing the SSH connection) stops the demo like Ctrl-C does: nothing is left running.

Each command runs as the session leader of a pseudo-terminal, as in a terminal window or an SSH login, and the
test closes the terminal: the kernel sends the command SIGHUP, later writes to the terminal fail, and when the
command exits every process still in its process group gets SIGHUP too (gunicorn reloads on it, Celery
restarts, HAProxy logs its state: all three would run on). Real processes on free ports, with SQLite and the
file broker in a temporary DATA_DIR, from this working tree and its .venv.
"""

import contextlib
import fcntl
import os
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from tests.test_quickstart import WORKER_READY, clean_env, free_port, run_processes

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 180  # migrate a fresh SQLite database, seed the demo, start gunicorn and the worker
STOP_TIMEOUT = 60  # dev.py gives its processes 30 s to stop before it kills them


def _take_the_terminal() -> None:
    """In the child, after setsid: stdin (the pseudo-terminal) becomes its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """`command` as the session leader of a pseudo-terminal, its output copied to `log`."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.master, terminal = os.openpty()
        try:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=terminal,
                stdout=terminal,
                stderr=terminal,
                start_new_session=True,
                preexec_fn=_take_the_terminal,  # noqa: PLW1509 - no lock is taken between fork and exec
            )
        finally:
            os.close(terminal)
        self.closing = threading.Event()
        self.reader = threading.Thread(target=self._copy_output, daemon=True)
        self.reader.start()

    def _copy_output(self) -> None:
        """Read what the processes write, as a terminal does (a full buffer would block their writes)."""
        with self.log.open("ab") as log:
            while not self.closing.is_set():
                if select.select([self.master], [], [], 0.2)[0]:
                    try:
                        data = os.read(self.master, 65536)
                    except OSError:  # EIO: nothing has the terminal open any more
                        return
                    if not data:
                        return
                    log.write(data)
                    log.flush()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def hang_up(self) -> None:
        """Close the terminal window: the kernel hangs up the terminal and sends its session leader SIGHUP."""
        self.closing.set()
        self.reader.join(5)
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def wait_for(self, ready, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if ready():
                return True
            time.sleep(0.5)
        return bool(ready())

    def close(self) -> None:
        """After the test: no process of it may outlive it."""
        self.hang_up()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def left_after(terminal: Terminal, data_dir: Path) -> dict[int, str]:
    """Close the terminal; once the command has exited (and its processes had a moment to), what still runs with
    the run's DATA_DIR. Those are killed, so a failing test leaks nothing."""
    terminal.hang_up()
    with contextlib.suppress(subprocess.TimeoutExpired):
        terminal.process.wait(STOP_TIMEOUT)
    deadline = time.monotonic() + 10
    while (left := run_processes(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


@pytest.mark.slow
def test_closing_the_terminal_stops_the_demo_web_server_and_worker(tmp_path):
    port, haproxy_port, admin_port = free_port(), free_port(), free_port()
    env = clean_env(tmp_path, port)
    env.update(DEMO_HAPROXY_PORT=str(haproxy_port), DEMO_HAPROXY_ADMIN_PORT=str(admin_port))
    data_dir = tmp_path / "data"
    command = [sys.executable, "scripts/dev.py", "up", "--no-self-hosted", "--port", str(port)]
    terminal = Terminal(command, env, tmp_path / "up.log")
    try:

        def ready() -> bool:
            output = terminal.output()
            return port_open(port) and "Press Ctrl-C" in output and WORKER_READY.search(output) is not None

        assert terminal.wait_for(ready, READY_TIMEOUT), f"the demo did not start:\n{terminal.output()[-4000:]}"
        running = run_processes(data_dir)
        assert any("gunicorn" in c for c in running.values()), running
        assert any("celery" in c and "worker" in c for c in running.values()), running

        left = left_after(terminal, data_dir)
        output = terminal.output()[-3000:]
        assert terminal.process.poll() is not None, f"dev.py still runs {STOP_TIMEOUT}s after the hangup:\n{output}"
        assert terminal.process.returncode == 0, f"dev.py did not stop as on Ctrl-C:\n{output}"
        assert not port_open(port), f"the web server still answers on {port} after the hangup"
        assert not left, f"closing the terminal left the demo's processes running: {left}"
    finally:
        terminal.close()


@pytest.mark.slow
def test_closing_the_terminal_stops_demo_haproxy_and_its_haproxy(tmp_path):
    """`manage.py demo_haproxy` run by hand in a terminal: its HAProxy must not outlive the terminal."""
    haproxy_port, admin_port = free_port(), free_port()
    env = clean_env(tmp_path, free_port())
    env.update(DJANGO_DEBUG="1", DEMO_HAPROXY_PORT=str(haproxy_port), DEMO_HAPROXY_ADMIN_PORT=str(admin_port))
    data_dir = tmp_path / "data"
    manage = [sys.executable, "manage.py"]
    migrate = subprocess.run([*manage, "migrate", "--noinput"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr
    terminal = Terminal([*manage, "demo_haproxy"], env, tmp_path / "demo_haproxy.log")
    try:
        served = terminal.wait_for(lambda: " serves http" in terminal.output(), 60)
        assert served, f"demo_haproxy did not start HAProxy:\n{terminal.output()[-3000:]}"
        running = run_processes(data_dir)
        assert any("haproxy -db" in c for c in running.values()), running
        assert port_open(haproxy_port) and port_open(admin_port)

        left = left_after(terminal, data_dir)
        assert terminal.process.poll() is not None, f"demo_haproxy still runs {STOP_TIMEOUT}s after the hangup"
        assert terminal.process.returncode == 0, f"demo_haproxy did not stop cleanly:\n{terminal.output()[-3000:]}"
        assert not left, f"closing the terminal left HAProxy running: {left}"
        assert not port_open(haproxy_port) and not port_open(admin_port)
        assert not (data_dir / "haproxy" / "demo_haproxy.pid").exists(), "demo_haproxy did not clean up after itself"
    finally:
        terminal.close()
