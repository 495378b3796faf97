"""The README's first command, run from a clean clone of the committed HEAD, serves /readyz with 200.

Uncommitted changes are not in the clone on purpose: this checks what a newcomer gets. The clone
makes its own .venv (pip may reuse its download cache) and keeps its data in the temporary folder.
"""

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 300  # a fresh virtual environment is installed first
# Variables of the test run that would point the demo away from its embedded defaults.
WORKER_READY = re.compile(r"celery@\S+ ready")
NOT_INHERITED = {"DATABASE_URL", "CELERY_BROKER_URL", "TEST_DATABASE_NAME", "DATA_DIR", "SECRET_KEY", "VIRTUAL_ENV"}


def readme_commands() -> list[str]:
    """The commands of README.md's first code block."""
    match = re.search(r"^```[^\n]*\n(.*?)^```", (ROOT / "README.md").read_text(), re.MULTILINE | re.DOTALL)
    assert match, "README.md has no code block"
    lines = [line.split("#", 1)[0].strip() for line in match.group(1).splitlines()]
    return [line.removeprefix("$ ") for line in lines if line]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clone_head(dest: Path) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(dest)], check=True)
    subprocess.run(["git", "checkout", "--quiet", "--detach", head.stdout.strip()], cwd=dest, check=True)


def clean_env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED and not k.startswith("DJANGO_")}
    main_venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != main_venv_bin)
    env.update(PORT=str(port), DATA_DIR=str(tmp_path / "data"))
    return env


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a local server we started
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the command's process group (it stops web and worker cleanly), SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_until(ready, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if ready():
            return True
        time.sleep(1)
    return ready()


@pytest.mark.slow
def test_readme_first_command_serves_readyz_from_a_clean_clone(tmp_path):
    command = readme_commands()[0]
    assert "dev.py up" in command, f"README's first command is not the demo: {command!r}"
    clone = tmp_path / "clone"
    clone_head(clone)
    port = free_port()
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            shlex.split(command),
            cwd=clone,
            env=clean_env(tmp_path, port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    readyz = {}

    def ready() -> bool:
        try:
            readyz["status"], readyz["body"] = get_json(f"http://127.0.0.1:{port}/readyz")
        except OSError as exc:
            readyz["status"], readyz["body"] = None, repr(exc)
        output = log_path.read_text(errors="replace")
        return readyz["status"] == 200 and "Registry running at" in output and WORKER_READY.search(output) is not None

    try:
        wait_until(ready, process, READY_TIMEOUT)
        output = log_path.read_text(errors="replace")
        tail = output[-4000:]
        assert readyz["status"] == 200, f"/readyz: {readyz}; exit code {process.poll()}; output:\n{tail}"
        assert readyz["body"] == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
        assert (clone / ".venv" / "bin" / "python").exists(), "the clone did not get its own .venv"
        assert (tmp_path / "data" / "registry.sqlite3").exists(), "the demo did not use the embedded SQLite default"
        assert "demo-admin" in output, f"the demo logins were not printed; output:\n{tail}"
        assert WORKER_READY.search(output), f"the Celery worker did not start; output:\n{tail}"
    finally:
        stop_group(process)
    assert process.returncode == 0, f"`{command}` did not stop cleanly on SIGTERM: {log_path.read_text()[-2000:]}"
