#!/usr/bin/env python3
"""The two commands of the README, for a fresh machine with only Python 3.11.

    python3 scripts/dev.py up [--port N] [--no-worker]   install, migrate, seed the demo, run web + worker,
                                                        HAProxy, and deploy a demo model to a self-hosted target
    python3 scripts/dev.py test [PYTEST ARGS...]        install, start PostgreSQL + Redis, lint, checks, pytest

Standard library only: it creates .venv and installs the project (pinned by constraints.txt) into it.
"""

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
PYTHON = BIN / "python"

TEST_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/registry"
TEST_BROKER_URL = "redis://127.0.0.1:6379/0"
TEST_WORKERS_MIN = 2
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
RELOAD_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main reload"
START_REDIS = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
    "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def say(message: str) -> None:
    with contextlib.suppress(OSError):  # the terminal is gone (SIGHUP): the demo still stops what it started
        print(f"==> {message}", flush=True)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def run(*command, env=None) -> None:
    """Run a command from the repository root; stop everything if it fails."""
    result = subprocess.run([str(part) for part in command], cwd=ROOT, env=env)
    if result.returncode != 0:
        fail(f"`{' '.join(str(part) for part in command)}` exited with status {result.returncode}")


# --- Installing ----------------------------------------------------------------------------------


def install_project(extras: str = "") -> None:
    """Create .venv if missing and install the project into it, pinned by constraints.txt.

    Skipped when pyproject.toml and constraints.txt have not changed since the last install.
    """
    if not PYTHON.exists():
        say(f"Creating virtual environment in {VENV}")
        run(sys.executable, "-m", "venv", VENV)
        run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    inputs = b"".join((ROOT / name).read_bytes() for name in ("pyproject.toml", "constraints.txt"))
    stamp = VENV / f".installed{extras and '-' + extras}"
    digest = hashlib.sha256(inputs).hexdigest()
    stamps = [stamp] if extras else [stamp, VENV / ".installed-test"]  # `test` installs the project too
    if any(done.exists() and done.read_text() == digest for done in stamps):
        return
    say(f"Installing the project{f' with [{extras}]' if extras else ''} (pinned by constraints.txt)")
    run(PYTHON, "-m", "pip", "install", "--quiet", "-c", "constraints.txt", "-e", f".[{extras}]" if extras else ".")
    stamp.write_text(digest)


# --- up: the demo --------------------------------------------------------------------------------


def demo_env() -> dict[str, str]:
    """DEBUG on; everything else is the embedded default (SQLite, local files, file broker) unless set."""
    env = dict(os.environ)
    env.setdefault("DJANGO_DEBUG", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own local server
                return True
        except OSError:
            time.sleep(0.3)
    return False


def stop(processes: list[subprocess.Popen]) -> None:
    """Ask each process to stop (SIGTERM: warm shutdown for Celery), kill what lingers, then whatever is left
    of its process group (each leads one: see spawn()), such as a worker whose parent had to be killed."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 30
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):  # no such group: all of it has exited
            os.killpg(process.pid, signal.SIGKILL)


# Ctrl-C; SIGTERM from a process manager or a test; SIGHUP when the terminal closes or SSH drops.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def stop_like_ctrl_c(signum, frame) -> None:
    """Any of STOP_SIGNALS: stop the web server, the worker and HAProxy (see up())."""
    raise KeyboardInterrupt


def _terminated_with_this_process():
    """Linux: a function for a child to run before exec so that it gets SIGTERM when dev.py dies, even of
    SIGKILL (prctl PR_SET_PDEATHSIG); None elsewhere."""
    prctl = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform.startswith("linux") else None
    if prctl is None:
        return None
    parent = os.getpid()

    def in_child() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # dev.py died before the prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def spawn(command: list, env: dict[str, str], **options) -> subprocess.Popen:
    """Start a demo process in a session of its own, so that a closing terminal (SIGHUP) or Ctrl-C (SIGINT)
    reaches dev.py alone, which stops each process cleanly (on SIGHUP gunicorn would reload and Celery
    restart, and outlive dev.py), and stop() can end the process's whole group."""
    return subprocess.Popen(
        [str(part) for part in command],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        preexec_fn=_terminated_with_this_process(),  # noqa: PLW1509 - dev.py starts no threads
        **options,
    )


def start_worker(env: dict[str, str]) -> subprocess.Popen:
    data_dir = Path(env.get("DATA_DIR", ROOT / "var"))
    say("Starting the Celery worker (with beat for periodic tasks)")
    return spawn(
        [BIN / "celery", "-A", "config", "worker", "--beat", "--schedule", data_dir / "celerybeat-schedule",
         "--loglevel", "INFO", "--concurrency", "2"],
        env,
    )  # fmt: skip


def start_web(env: dict[str, str], port: int) -> subprocess.Popen:
    """gunicorn, as in production (threaded workers: gunicorn.conf.py), so a browser's connections stay open.

    Not `runserver`: it sends a response's headers and body in two writes with Nagle's algorithm on, so
    every request after the first on a kept-alive connection waits 40 ms for the browser's delayed ACK.
    gunicorn sets TCP_NODELAY. Static files come from WhiteNoise (its finders, under DEBUG).
    """
    say(f"Starting the web server (gunicorn) on 127.0.0.1:{port}")
    return spawn(
        [BIN / "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--graceful-timeout", "5"],
        env,
    )  # fmt: skip


def find_haproxy() -> str | None:
    return shutil.which("haproxy", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def ensure_haproxy() -> bool:
    """HAProxy (Debian package) for the self-hosted target: install it if missing; False if that fails."""
    if find_haproxy():
        return True
    say("HAProxy is not installed; the self-hosted demo target needs it")
    install_debian_packages(["haproxy"])
    if find_haproxy():
        return True
    say(f"{SELF_HOSTED_OFF} (could not install it; run `apt-get install -y haproxy` as root, then `up` again)")
    return False


SELF_HOSTED_OFF = "The registry demo runs without its self-hosted target, which needs HAProxy"


def start_haproxy(env: dict[str, str], haproxy: list[subprocess.Popen]) -> bool:
    """`manage.py demo_haproxy`: HAProxy in the foreground; stopping it stops the model servers behind it."""
    say(f"Starting HAProxy for the self-hosted target (traffic on 127.0.0.1:{env['DEMO_HAPROXY_PORT']}, "
        f"runtime API on 127.0.0.1:{env['DEMO_HAPROXY_ADMIN_PORT']})")  # fmt: skip
    process = spawn([PYTHON, "manage.py", "demo_haproxy"], env, stdout=subprocess.PIPE, text=True)
    haproxy.append(process)
    for line in process.stdout:  # it prints one line when HAProxy answers, or exits with the reason on stderr
        print(f"    {line.rstrip()}", flush=True)
        if " serves http" in line:
            return True
    process.wait()
    haproxy.remove(process)
    say(f"{SELF_HOSTED_OFF} on free ports: HAProxy did not start (see above; --haproxy-port/--haproxy-admin-port)")
    return False


def post_json(url: str, body: dict, timeout: float = 5) -> dict:
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our own local HAProxy
        return json.loads(response.read())


def deploy_demo(env: dict[str, str], helpers: list[subprocess.Popen]) -> dict | None:
    """`manage.py demo_deploy` (register, request, approve v1 then v2; the worker deploys): its JSON summary."""
    say("Self-hosted demo: owner registers demo/linear v1 and v2, reviewer approves each promotion to 'local'")
    process = spawn([PYTHON, "manage.py", "demo_deploy"], env, stdout=subprocess.PIPE, text=True)
    helpers.append(process)
    summary = None
    for line in process.stdout:
        if line.startswith("{"):
            summary = json.loads(line)
        else:
            print(f"    {line.rstrip()}", flush=True)
    if process.wait() != 0 or summary is None:
        say("The self-hosted demo did not finish (see above); the registry demo runs on")
        return None
    return summary


def wait_for_version(endpoint: str, version: int, timeout: float = 90) -> str | None:
    """POST the demo input through HAProxy until the answer comes from `version`; the answer as JSON text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = post_json(f"{endpoint}/infer", DEMO_INPUT)
            if answer.get("model_version") == str(version):
                return json.dumps(answer, separators=(",", ":"))
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    return None


DEMO_INPUT = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
DEMO_ANSWER = {1: 14.0, 2: 24.0}  # governance/demo.py: y = x·[0.5, 0.25, 1] + 10 × version


def show_self_hosted(env: dict[str, str], summary: dict, port: int) -> bool:
    """Check that curl through HAProxy answers from the serving version, then print it and the rollback."""
    endpoint, serving, back = summary["endpoint"], summary["serving_version"], summary["rollback_version"]
    answer = wait_for_version(endpoint, serving)
    if answer is None:
        say(f"HAProxy at {endpoint} did not answer from version {serving}; see the worker's output above")
        return False
    token = subprocess.run(
        [PYTHON, "manage.py", "create_api_token", "admin", "--scopes", "read,deployments:write",
         "--name", "quickstart-rollback", "--expires-in-days", "7"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    data = json.dumps(DEMO_INPUT, separators=(",", ":"))
    print(flush=True)
    say(f"Self-hosted target '{summary['target']}': demo/linear version {serving} answers through HAProxy")
    print(f"    $ curl -s {endpoint}/infer -H 'Content-Type: application/json' -d '{data}'", flush=True)
    print(f"    {answer}", flush=True)
    if back is None or token.returncode != 0:
        return True
    reason = json.dumps({"reason": f"quickstart: back to version {back}"})
    say(f'Roll back (as admin): the worker makes version {back} answer again, "data":[{DEMO_ANSWER.get(back)}]')
    bearer = token.stdout.split()[-1]
    rollback_url = f"http://127.0.0.1:{port}/api/v1/targets/{summary['target']}/rollback"
    json_type = "-H 'Content-Type: application/json'"
    print(
        f"    $ curl -s -X POST -H 'Authorization: Bearer {bearer}' {json_type} {rollback_url} -d '{reason}'",
        flush=True,
    )
    say(f"The target's releases and policy: http://127.0.0.1:{port}/targets/{summary['target']}/ (signed in as admin)")
    return True


def up(port: int, with_worker: bool, self_hosted: bool, haproxy_port: int, haproxy_admin_port: int) -> None:
    install_project()
    if not port_is_free(port):
        fail(f"port {port} on 127.0.0.1 is in use; pass --port N or set PORT")
    env = demo_env()
    env.update(DEMO_HAPROXY_PORT=str(haproxy_port), DEMO_HAPROXY_ADMIN_PORT=str(haproxy_admin_port))
    run(PYTHON, "manage.py", "migrate", "--noinput", env=env)
    logins = subprocess.run(
        [PYTHON, "manage.py", "seed_demo"], cwd=ROOT, env=env, capture_output=True, text=True
    )  # fmt: skip
    if logins.returncode != 0:
        sys.stderr.write(logins.stdout + logins.stderr)
        fail("manage.py seed_demo failed")
    if self_hosted and not with_worker:
        say("The self-hosted target needs the Celery worker; skipped with --no-worker")
    self_hosted = self_hosted and with_worker and ensure_haproxy()

    processes: list[subprocess.Popen] = []  # web, worker: stopped first
    helpers: list[subprocess.Popen] = []  # demo_deploy while it runs
    haproxy: list[subprocess.Popen] = []  # stopped last: it stops the model servers the worker started
    for signum in STOP_SIGNALS:  # SIGINT even where a parent shell ignores it
        signal.signal(signum, stop_like_ctrl_c)
    try:
        if self_hosted:
            start_haproxy(env, haproxy)
        if with_worker:
            processes.append(start_worker(env))
        web = start_web(env, port)
        processes.append(web)
        url = f"http://127.0.0.1:{port}/"
        if not wait_for_http(url + "healthz", web):
            fail("the web server did not come up; see its output above")
        print(f"\n{logins.stdout.rstrip()}\n", flush=True)
        say(f"Registry running at {url}  (API docs: {url}api/docs/, ready check: {url}readyz)")
        if haproxy:
            summary = deploy_demo(env, helpers)
            if summary is not None:
                show_self_hosted(env, summary, port)
        stopping = "the web server" + (", the worker" if with_worker else "") + (", HAProxy" if haproxy else "")
        say(f"Press Ctrl-C to stop {stopping}" + (" and the model servers" if haproxy else ""))
        while all(process.poll() is None for process in processes + haproxy):
            time.sleep(0.5)
        fail("a process exited unexpectedly; stopping the others")
    except KeyboardInterrupt:
        say("Stopping")
    finally:
        for signum in STOP_SIGNALS:  # a second Ctrl-C must not cut the cleanup short
            signal.signal(signum, signal.SIG_IGN)
        stop(helpers + processes)
        stop(haproxy)


# --- test: the whole suite -----------------------------------------------------------------------


def test_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", TEST_DATABASE_URL)
    env.setdefault("CELERY_BROKER_URL", TEST_BROKER_URL)
    env["DJANGO_DEBUG"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def wait_until_reachable(host: str, port: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reachable(host, port):
            return True
        time.sleep(0.5)
    return False


def as_root(command: str) -> str | None:
    """The shell command prefixed for root: as is when we are root, with sudo when it exists."""
    if os.geteuid() == 0:
        return command
    if shutil.which("sudo"):
        return f"sudo -n sh -c '{command}'"
    return None


def sh_as_root(command: str) -> bool:
    wrapped = as_root(command)
    if wrapped is None:
        print(f"    cannot run as root (not root, no sudo): {command}", flush=True)
        return False
    print(f"    $ {wrapped}", flush=True)
    return subprocess.run(wrapped, shell=True).returncode == 0  # noqa: S602 - fixed commands of our own


def install_debian_packages(packages: list[str]) -> bool:
    say(f"Installing Debian packages: {' '.join(packages)}")
    return sh_as_root("apt-get update -qq") and sh_as_root(
        f"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {' '.join(packages)}"
    )


def trust_local_postgres_user() -> None:
    """A freshly installed Debian cluster asks for a password on 127.0.0.1; let `postgres` in, as CI expects."""
    rule = "host all postgres 127.0.0.1/32 trust"
    edit = f'grep -qx "{rule}" "$f" || sed -i "1i {rule}" "$f"'
    sh_as_root(f"for f in /etc/postgresql/*/main/pg_hba.conf; do {edit}; done")
    sh_as_root(f"{RELOAD_POSTGRES} 2>/dev/null || true")  # if apt already started it


def ensure_service(name: str, url: str, default_port: int, binary: str, package: str, start: str) -> None:
    """Make the service at URL reachable: probe it, start it if local, install it if missing."""
    host, port = urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or default_port
    if reachable(host, port):
        return
    if host not in {"127.0.0.1", "localhost", "::1"}:
        fail(f"{name} at {host}:{port} is not reachable (it is not local, so it cannot be started here)")
    say(f"{name} is not answering on {host}:{port}; starting it")
    if not shutil.which(binary):
        if not install_debian_packages([package]):
            fail(f"could not install {package}; install {name} or point the URL at a running server")
        if name == "PostgreSQL":
            trust_local_postgres_user()
    sh_as_root(start)
    if not wait_until_reachable(host, port):
        fail(f"{name} is still not reachable on {host}:{port}; the tests need it and are not skipped")
    say(f"{name} is up on {host}:{port}")


CREATE_DATABASE = """
import sys, psycopg
from psycopg import errors, sql
from urllib.parse import urlsplit
url = urlsplit(sys.argv[1])
name = url.path.lstrip("/")
with psycopg.connect(url._replace(scheme="postgresql", path="/postgres").geturl(), autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except errors.DuplicateDatabase:
            pass  # created meanwhile by a parallel run
"""


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database the URL names, so management commands can connect to it."""
    if urlsplit(url).scheme in {"postgres", "postgresql", "pgsql"}:
        run(PYTHON, "-c", CREATE_DATABASE, url)


# Debian packages the suite drives for real: HAProxy (self-hosted target), socat (its runtime API from a
# shell), Chromium (the browser tests). Each is looked up by its binary.
SYSTEM_TOOLS = {"haproxy": "haproxy", "socat": "socat", "chromium": "chromium"}


def ensure_system_tools() -> None:
    """Install the Debian packages the tests need; fail (the tests are never skipped) when one cannot be had."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [package for binary, package in SYSTEM_TOOLS.items() if not shutil.which(binary, path=path)]
    if missing and not install_debian_packages(missing):
        fail(f"could not install {' '.join(missing)}; the tests need them (apt-get install -y {' '.join(missing)})")
    still_missing = [binary for binary in SYSTEM_TOOLS if not shutil.which(binary, path=path)]
    if still_missing:
        fail(f"{' '.join(still_missing)} not found after installing; the tests need them")


def parallel(pytest_args: list[str]) -> list[str]:
    """pytest-xdist workers, one per core and at least TEST_WORKERS_MIN, unless the arguments choose (`-n 0`
    runs in one process). Much of the suite waits on processes it started (workers, servers, HAProxy), so
    two workers on two cores took 14 minutes where one process took 23 (the same machine, one afternoon)."""
    chosen = ("-n", "--numprocesses", "--dist", "-d", "--tx", "--pdb", "--trace")  # xdist refuses the last two
    if any(arg.startswith(chosen) or arg.endswith("no:xdist") for arg in pytest_args):
        return pytest_args
    workers = max(TEST_WORKERS_MIN, os.cpu_count() or 1)
    return ["-n", str(workers), "--dist", "worksteal", *pytest_args]


def test(pytest_args: list[str]) -> None:
    install_project("test")
    ensure_system_tools()
    env = test_env()
    ensure_service("PostgreSQL", env["DATABASE_URL"], 5432, "pg_ctlcluster", "postgresql", START_POSTGRES)
    ensure_service("Redis", env["CELERY_BROKER_URL"], 6379, "redis-server", "redis-server", START_REDIS)
    ensure_database(env["DATABASE_URL"])

    say("Lint: ruff check")
    run(BIN / "ruff", "check", ".", env=env)
    say("Format: ruff format --check")
    run(BIN / "ruff", "format", "--check", ".", env=env)
    say("Migrations are up to date")
    run(PYTHON, "manage.py", "makemigrations", "--check", "--dry-run", env=env)
    say("OpenAPI schema validates without warnings")
    with tempfile.TemporaryDirectory() as tmp:
        schema = Path(tmp) / "openapi.yaml"
        run(PYTHON, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", schema, env=env)
    pytest_args = parallel(pytest_args)
    say("pytest " + " ".join(pytest_args))
    result = subprocess.run([BIN / "pytest", *pytest_args], cwd=ROOT, env=env)
    sys.exit(result.returncode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="install and run the demo (SQLite, local files, local broker)")
    up_parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    up_parser.add_argument("--no-worker", action="store_true", help="run the web server only")
    up_parser.add_argument("--no-self-hosted", action="store_true", help="no HAProxy, no demo deployment")
    up_parser.add_argument("--haproxy-port", type=int, default=int(os.environ.get("DEMO_HAPROXY_PORT", "8080")))
    up_parser.add_argument(
        "--haproxy-admin-port", type=int, default=int(os.environ.get("DEMO_HAPROXY_ADMIN_PORT", "9999"))
    )
    commands.add_parser("test", help="install and run lint, checks and the whole test suite; extra args go to pytest")
    argv = sys.argv[1:]
    if argv[:1] == ["test"]:  # everything after `test` belongs to pytest, untouched
        test(argv[1:])
    args = parser.parse_args(argv)
    up(
        args.port,
        with_worker=not args.no_worker,
        self_hosted=not args.no_self_hosted,
        haproxy_port=args.haproxy_port,
        haproxy_admin_port=args.haproxy_admin_port,
    )


if __name__ == "__main__":
    main()
