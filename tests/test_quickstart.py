"""The README's first command, run from a clean clone of the committed HEAD: /readyz answers 200, the
demo model answers through the demo HAProxy from version 2, the printed rollback makes version 1
answer, and SIGTERM leaves no HAProxy or model server behind.

Uncommitted changes are not in the clone on purpose: this checks what a newcomer gets. The clone
makes its own .venv (pip may reuse its download cache) and keeps its data in the temporary folder.
Every port is a free one, so it runs next to a demo on the default ports. Needs haproxy (Debian
package; `scripts/dev.py test` installs it): without it the demo prints why and this test fails.
"""

import contextlib
import http.client
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
ROLLBACK_TIMEOUT = 60  # rollback request -> the previous version answers (about a second when all is well)
# Variables of the test run that would point the demo away from its embedded defaults.
WORKER_READY = re.compile(r"celery@\S+ ready")
NOT_INHERITED = {"DATABASE_URL", "CELERY_BROKER_URL", "TEST_DATABASE_NAME", "DATA_DIR", "SECRET_KEY", "VIRTUAL_ENV"}


def readme_commands() -> list[str]:
    """The commands of README.md's first code block."""
    match = re.search(r"^```[^\n]*\n(.*?)^```", (ROOT / "README.md").read_text(), re.MULTILINE | re.DOTALL)
    assert match, "README.md has no code block"
    lines = [line.split("#", 1)[0].strip() for line in match.group(1).splitlines()]
    return [line.removeprefix("$ ") for line in lines if line]


INFER_COMMAND = re.compile(r"^    \$ (curl -s \S+/v2/models/linear/infer .*)$", re.MULTILINE)
ROLLBACK_COMMAND = re.compile(r"^    \$ (curl -s -X POST .*/api/v1/targets/local/rollback .*)$", re.MULTILINE)


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


def kept_alive_request_times(port: int, requests: int = 9) -> list[float]:
    """Seconds per GET /healthz after the first, all on one kept-alive connection (as a browser sends them)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    times = []
    try:
        for _ in range(requests + 1):
            started = time.perf_counter()
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
            assert not response.will_close, "the demo's web server closed a kept-alive connection"
            times.append(time.perf_counter() - started)
    finally:
        connection.close()
    return times[1:]


def run_processes(data_dir: Path) -> dict[int, str]:
    """pid -> command line of the live (not zombie) processes of a demo run: those started with its DATA_DIR
    (`up` and all it starts, each in a session of its own, inherit it), or naming it on their command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and (f"DATA_DIR={data_dir}".encode() in environ or str(data_dir) in cmdline):
            found[int(entry.name)] = cmdline.strip()
    return found


def stop(process: subprocess.Popen, data_dir: Path) -> dict[int, str]:
    """SIGTERM the command alone, as a process manager would: it must stop everything it started.

    Returns what was left of the run a few seconds after it exited (children of a stopped process may take a
    moment to exit), and SIGKILLs it.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=60)
    deadline = time.monotonic() + 5
    while (left := run_processes(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()
    return left


def curl(command: str) -> tuple[int, dict]:
    """Send the request a printed `curl -s [-X M] [-H 'K: V']... URL [-d DATA]` line describes; (status, JSON)."""
    args = shlex.split(command)
    assert args[0] == "curl", command
    method, headers, data, url = None, {}, None, None
    rest = iter(args[1:])
    for arg in rest:
        if arg == "-s":
            continue
        if arg == "-X":
            method = next(rest)
        elif arg == "-H":
            key, _, value = next(rest).partition(":")
            headers[key.strip()] = value.strip()
        elif arg == "-d":
            data = next(rest).encode()
        elif arg.startswith("http://") and url is None:
            url = arg
        else:
            raise AssertionError(f"unexpected curl argument {arg!r} in {command!r}")
    method = method or ("POST" if data is not None else "GET")  # curl -d posts
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - servers this test started
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def demo_processes(data_dir: Path) -> dict[int, str]:
    """pid -> command line of every live HAProxy and model server whose command line names the demo's DATA_DIR."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(data_dir) in cmdline and ("haproxy" in cmdline or "governance.hosts.model_server" in cmdline):
            found[int(entry.name)] = cmdline.strip()
    return found


def wait_until(ready, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if ready():
            return True
        time.sleep(1)
    return ready()


def start(command: str, clone: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            shlex.split(command),
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_demo(process: subprocess.Popen, port: int, log_path: Path, timeout: float) -> tuple[dict, str]:
    """Wait for /readyz 200, the worker, and the end of the demo's output ("Press Ctrl-C")."""
    readyz = {}

    def ready() -> bool:
        try:
            readyz["status"], readyz["body"] = get_json(f"http://127.0.0.1:{port}/readyz")
        except OSError as exc:
            readyz["status"], readyz["body"] = None, repr(exc)
        output = log_path.read_text(errors="replace")
        return (
            readyz["status"] == 200
            and "Press Ctrl-C" in output  # printed after the self-hosted demo is deployed (or has given up)
            and WORKER_READY.search(output) is not None
        )

    wait_until(ready, process, timeout)
    return readyz, log_path.read_text(errors="replace")


def infer_until(command: str, version: str, timeout: float) -> dict:
    """Run the printed inference curl until the answer comes from `version`; the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        status, answer = curl(command)
        if status == 200 and answer["model_version"] == version or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def stop_and_check(process: subprocess.Popen, data_dir: Path, command: str, log_path: Path) -> None:
    group_left = stop(process, data_dir)
    leftovers = demo_processes(data_dir)  # `up` has exited: whatever still runs was left behind
    for pid in leftovers:  # never leak them into the rest of the run, but fail below
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert process.returncode == 0, f"`{command}` did not stop cleanly on SIGTERM: {log_path.read_text()[-2000:]}"
    assert not leftovers, f"SIGTERM left demo processes running: {leftovers}"
    assert not group_left, f"SIGTERM left processes of the web server, worker or HAProxy running: {group_left}"


@pytest.mark.slow
def test_readme_first_command_serves_readyz_and_a_self_hosted_model_from_a_clean_clone(tmp_path):
    command = readme_commands()[0]
    assert "dev.py up" in command, f"README's first command is not the demo: {command!r}"
    clone = tmp_path / "clone"
    clone_head(clone)
    port, haproxy_port, admin_port = free_port(), free_port(), free_port()
    env = clean_env(tmp_path, port)
    env.update(DEMO_HAPROXY_PORT=str(haproxy_port), DEMO_HAPROXY_ADMIN_PORT=str(admin_port))
    data_dir = tmp_path / "data"
    log_path = tmp_path / "up.log"
    process = start(command, clone, env, log_path)
    try:
        readyz, output = wait_for_demo(process, port, log_path, READY_TIMEOUT)
        tail = output[-4000:]
        assert readyz["status"] == 200, f"/readyz: {readyz}; exit code {process.poll()}; output:\n{tail}"
        assert readyz["body"] == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
        assert (clone / ".venv" / "bin" / "python").exists(), "the clone did not get its own .venv"
        assert (tmp_path / "data" / "registry.sqlite3").exists(), "the demo did not use the embedded SQLite default"
        assert "demo-admin" in output, f"the demo logins were not printed; output:\n{tail}"
        assert WORKER_READY.search(output), f"the Celery worker did not start; output:\n{tail}"

        # A server that writes headers and body in two sends with Nagle's algorithm on (runserver) holds each
        # request after a connection's first for the client's delayed ACK: 40 ms or more, every time.
        times = sorted(kept_alive_request_times(port))
        assert times[len(times) // 2] < 0.02, f"kept-alive requests stall (delayed ACK): {times}"

        # The self-hosted target: the printed curl answers from version 2 through the demo HAProxy.
        assert "demo/linear version 2 answers through HAProxy" in output, f"no self-hosted demo; output:\n{tail}"
        infer = INFER_COMMAND.search(output)
        assert infer, f"the curl command was not printed; output:\n{tail}"
        infer = infer.group(1)
        assert f"http://127.0.0.1:{haproxy_port}/v2/models/linear/infer" in infer
        status, answer = curl(infer)
        assert status == 200, answer
        assert answer["model_name"] == "linear" and answer["model_version"] == "2", answer
        assert answer["outputs"][0]["data"] == [24.0], answer  # 1·0.5 + 2·0.25 + 3·1 + bias 20
        running = demo_processes(data_dir)
        assert sum("haproxy" in c for c in running.values()) == 1, running
        assert sum("model_server" in c for c in running.values()) == 2, running  # v2 serving, v1 kept for rollback

        # The printed rollback, over REST, makes version 1 answer again.
        rollback = ROLLBACK_COMMAND.search(output)
        assert rollback, f"the rollback command was not printed; output:\n{tail}"
        status, body = curl(rollback.group(1))
        assert status == 202, body
        assert body["version"] == 1 and body["model"] == "demo/linear", body
        answer = infer_until(infer, "1", ROLLBACK_TIMEOUT)
        assert answer["model_version"] == "1", f"version 1 does not answer after the rollback: {answer}"
        assert answer["outputs"][0]["data"] == [14.0], answer
    finally:
        stop_and_check(process, data_dir, command, log_path)

    # Again on the same data: nothing is registered or promoted twice, and the rolled-back-to version
    # serves behind the new HAProxy (its slots start empty; the reconciler deploys the desired release).
    log_path = tmp_path / "up-again.log"
    process = start(command, clone, env, log_path)
    try:
        readyz, output = wait_for_demo(process, port, log_path, READY_TIMEOUT)
        tail = output[-4000:]
        assert readyz["status"] == 200, f"/readyz: {readyz}; exit code {process.poll()}; output:\n{tail}"
        assert "demo/linear version 1 answers through HAProxy" in output, f"output:\n{tail}"
        answer = infer_until(infer, "1", 5)
        assert answer["model_version"] == "1" and answer["outputs"][0]["data"] == [14.0], answer
        # Release 2 was rolled back from, so a rollback without a release number has nowhere to go: none is offered.
        assert ROLLBACK_COMMAND.search(output) is None, f"output:\n{tail}"
        token = re.search(r"Authorization: Bearer (\S+?)'", rollback.group(1)).group(1)  # the first run's, 7 days
        api = f"http://127.0.0.1:{port}/api/v1"
        promotions = curl(f"curl -s -H 'Authorization: Bearer {token}' {api}/promotions/?model=demo/linear")
        releases = curl(f"curl -s -H 'Authorization: Bearer {token}' {api}/targets/local/releases")
        assert [p["version"] for p in promotions[1]["results"]] == [2, 1], promotions
        assert [(r["number"], r["version"]) for r in releases[1]["results"]] == [(2, 2), (1, 1)], releases
    finally:
        stop_and_check(process, data_dir, command, log_path)
