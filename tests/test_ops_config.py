"""Operations review: what a deployment is refused, and how long it may wait on a server that does not answer.

Each case starts real processes (Python on config.settings, `manage.py check`, a Celery worker and beat, gunicorn)
with the environment under test, against the PostgreSQL and Redis the suite runs on, or against a local TCP server
that accepts connections and never answers (a database or an S3 endpoint that hangs).
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests import processes

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {"DJANGO_DEBUG": "0", "SECRET_KEY": "ops-config-" + "x" * 50}
LOCAL = {"ARTIFACT_STORAGE": "local"}  # local disk, chosen outright
S3 = {"ARTIFACT_STORAGE": "s3", "S3_BUCKET": "registry-artifacts"}


@pytest.fixture
def database_url(db):
    """`database_url(**query)`: the URL of this run's test database on the suite's PostgreSQL, with these query
    parameters (the processes only read it)."""
    processes.require_postgresql()

    def database_url(**query: str) -> str:
        base = processes.test_database_url()
        return f"{base}?{'&'.join(f'{key}={value}' for key, value in query.items())}" if query else base

    return database_url


@pytest.fixture
def run(tmp_path):
    """`run(*argv, unset=(...), timeout=..., **env)`: a Python process in the checkout with this environment."""

    def run(*args: str, unset: tuple[str, ...] = (), timeout: float = 120, **env: str):
        full = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DATA_DIR": str(tmp_path), **env}
        full.pop("TEST_DATABASE_NAME", None)
        for name in unset:
            full.pop(name, None)
        return subprocess.run(  # noqa: S603
            [sys.executable, *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout
        )

    return run


def last_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def refusal(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: "), result.stderr[-2000:]
    return last


class SilentServer:
    """A TCP server that accepts every connection and never sends a byte (a hung database or S3 endpoint)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        for conn in [self.sock, *self.accepted]:
            conn.close()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


# --- 1, 2: the database connection: a bounded connect, the URL's own options kept ----------------------

READYZ = (
    "import django, json, time; django.setup(); from django.test import Client; start = time.monotonic(); "
    "r = Client().get('/readyz', HTTP_HOST='127.0.0.1'); "
    "print(json.dumps({'status': r.status_code, 'body': r.json(), 'seconds': time.monotonic() - start}))"
)


def test_readyz_answers_within_the_connect_timeout_when_the_database_never_answers(run, silent_server):
    """A server that accepts TCP and never answers held /readyz (and every request, worker and beat) for minutes."""
    url = f"postgres://registry@127.0.0.1:{silent_server.port}/registry"
    try:
        result = run("-c", READYZ, DATABASE_URL=url, DATABASE_CONNECT_TIMEOUT="2", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("/readyz was still waiting for the database after 60 s")
    answer = last_json(result)
    assert answer["status"] == 503
    assert answer["body"]["checks"]["database"] == "error: OperationalError"
    assert answer["seconds"] < 20, answer
    assert silent_server.accepted, "the database connection never reached the silent server"


DATABASE_OPTIONS = (
    "import django, json; django.setup(); from django.conf import settings; "
    "print(json.dumps(settings.DATABASES['default']['OPTIONS']))"
)


def test_database_connect_timeout_defaults_to_five_seconds_and_the_url_wins(run, database_url):
    assert last_json(run("-c", DATABASE_OPTIONS))["connect_timeout"] == 5
    assert last_json(run("-c", DATABASE_OPTIONS, DATABASE_CONNECT_TIMEOUT="9"))["connect_timeout"] == 9
    from_url = run("-c", DATABASE_OPTIONS, DATABASE_URL=database_url(connect_timeout="3"), DATABASE_CONNECT_TIMEOUT="9")
    assert last_json(from_url)["connect_timeout"] == 3


def test_the_database_urls_options_survive_beside_jit_off(run, database_url):
    """`?options=-c statement_timeout=5000` set by an operator was replaced by the registry's own `-c jit=off`."""
    probe = (
        "import django, json; django.setup(); from django.db import connection; cursor = connection.cursor(); "
        "print(json.dumps({name: cursor.execute(f'SHOW {name}').fetchone()[0] for name in "
        "('statement_timeout', 'jit', 'lock_timeout')}))"
    )
    options = "-c%20statement_timeout%3D5000%20-c%20lock_timeout%3D2s"
    shown = last_json(run("-c", probe, DATABASE_URL=database_url(options=options)))
    assert shown == {"statement_timeout": "5s", "jit": "off", "lock_timeout": "2s"}
    # The operator's own jit setting comes later on the command line, so it wins.
    assert last_json(run("-c", probe, DATABASE_URL=database_url(options="-c%20jit%3Don")))["jit"] == "on"
    # libpq's PGOPTIONS (docs/operations.md: `PGOPTIONS='-c lock_timeout=5s' manage.py migrate`) is passed on too,
    # before the URL's options; libpq itself ignores it once `options` is given.
    shown = last_json(run("-c", probe, DATABASE_URL=database_url(), PGOPTIONS=" -c lock_timeout=5s "))
    assert shown == {"statement_timeout": "0", "jit": "off", "lock_timeout": "5s"}
    both = run("-c", probe, DATABASE_URL=database_url(options=options), PGOPTIONS="-c lock_timeout=5s -c jit=on")
    assert last_json(both) == {"statement_timeout": "5s", "jit": "on", "lock_timeout": "2s"}


# --- 3, 4: workers and beat refuse what the web refuses; local artifact storage must be chosen --------

CELERY_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")


def test_a_celery_worker_and_beat_refuse_the_demo_database_with_debug_off(run, tmp_path):
    """They ran real tasks against an empty SQLite file: Celery runs the system checks and ignores their errors."""
    worker = ("-m", "celery", "-A", "config", "worker", "-P", "solo", "-Q", "ops-config-refused", *CELERY_FLAGS)
    beat = ("-m", "celery", "-A", "config", "beat", "-s", str(tmp_path / "beat-schedule"))
    for argv in (worker, beat):
        try:
            result = run(*argv, unset=("DATABASE_URL",), timeout=60, **PRODUCTION, **LOCAL)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`celery {argv[4]}` with debug off and no DATABASE_URL was still running after 60 s")
        output = result.stdout + result.stderr
        assert result.returncode != 0, output[-3000:]
        assert "refusing to start: DATABASE_URL is not set (or names SQLite) while DJANGO_DEBUG is off" in output
        assert "ALLOW_EMBEDDED_BACKENDS=1" in output and "(core.E001)" in output
        assert "core.E003" not in output  # local storage was chosen outright


def start_worker(tmp_path: Path, name: str, unset: tuple[str, ...], **env: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"{name}.log"
    full = {**os.environ, "DATA_DIR": str(tmp_path / name), **env}
    for variable in ("TEST_DATABASE_NAME", *unset):
        full.pop(variable, None)
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", "solo", "-l", "info", "-n", f"{name}@%h"]
    command += ["-Q", f"ops-config-{name}", *CELERY_FLAGS]
    proc = subprocess.Popen(command, cwd=ROOT, env=full, stdout=log.open("w"), stderr=subprocess.STDOUT)  # noqa: S603
    return proc, log


@pytest.mark.parametrize(
    ("name", "env", "unset"),
    [
        # The README's demo (scripts/dev.py up): debug on, SQLite, the file broker, local disk.
        ("demo", {"DJANGO_DEBUG": "1"}, ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_STORAGE")),
        # Production on PostgreSQL and Redis with artifacts on local disk named outright.
        ("production", {**PRODUCTION, **LOCAL}, ()),
    ],
)
def test_a_worker_on_an_accepted_configuration_starts(tmp_path, database_url, name, env, unset):
    if "DATABASE_URL" not in unset:
        env = {**env, "DATABASE_URL": database_url()}
    proc, log = start_worker(tmp_path, name, unset, **env)

    def ready() -> bool:
        assert proc.poll() is None, f"the worker exited:\n{log.read_text()[-3000:]}"
        return "ready." in log.read_text()

    try:
        processes.wait(ready, 90, "the worker to be ready", interval=0.2)
        assert "refusing to start" not in log.read_text()
    finally:
        processes.stop(proc)


def test_production_refuses_artifacts_on_local_disk_by_default(run, database_url):
    """ARTIFACT_STORAGE unset with debug off kept uploads in the container's DATA_DIR, lost when it is recreated."""
    servers = {"DATABASE_URL": database_url(), "CELERY_BROKER_URL": os.environ["CELERY_BROKER_URL"]}
    unset = ("ARTIFACT_STORAGE", "ALLOW_EMBEDDED_BACKENDS")
    check = run("manage.py", "check", unset=unset, **PRODUCTION, **servers)
    assert check.returncode != 0
    assert "(core.E003) ARTIFACT_STORAGE is not set while DJANGO_DEBUG is off" in check.stderr
    assert "ARTIFACT_STORAGE=s3 with S3_BUCKET" in check.stderr and "ARTIFACT_STORAGE=local with" in check.stderr
    # gunicorn runs no system checks: each web worker stops as it loads the application.
    web = run("-c", "from config.wsgi import application", unset=unset, **PRODUCTION, **servers)
    assert "ARTIFACT_STORAGE is not set while DJANGO_DEBUG is off" in refusal(web)

    for accepted in (LOCAL, {"ARTIFACT_STORAGE": " Local "}, S3, {"ALLOW_EMBEDDED_BACKENDS": "1"}):
        others = tuple(name for name in unset if name not in accepted)
        result = run("manage.py", "check", unset=others, **PRODUCTION, **servers, **accepted)
        assert result.returncode == 0, (accepted, result.stderr[-2000:])
    # Debug (the demo, the test suite) keeps local disk without being asked.
    assert run("manage.py", "check", unset=unset, DJANGO_DEBUG="1").returncode == 0


# --- 5, 6: S3: bounded waits, and no bucket refused at start -------------------------------------------

S3_SIZE = (
    "import django, json, time; django.setup(); from registry.storage import blob_store; "
    "store = blob_store(); config = store.client.meta.config; start = time.monotonic()\n"
    "try:\n    store.size('0' * 64); error = None\nexcept Exception as exc:\n    error = type(exc).__name__\n"
    "print(json.dumps({'error': error, 'seconds': time.monotonic() - start, 'connect': config.connect_timeout, "
    "'read': config.read_timeout, 'retries': config.retries}))"
)


def test_an_s3_endpoint_that_never_answers_fails_a_call_within_the_configured_bound(run, silent_server):
    """botocore's defaults (60 s a read, 5 attempts) held the call, and a web thread, for minutes."""
    env = {
        **S3,
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{silent_server.port}",
        "S3_CONNECT_TIMEOUT": "1",
        "S3_READ_TIMEOUT": "1",
        "AWS_ACCESS_KEY_ID": "ops-config",
        "AWS_SECRET_ACCESS_KEY": "ops-config-secret",
    }
    try:
        result = run("-c", S3_SIZE, timeout=45, **env)
    except subprocess.TimeoutExpired:
        pytest.fail("blob_store().size() was still waiting on the silent S3 endpoint after 45 s")
    answer = last_json(result)
    assert answer["error"] == "ReadTimeoutError", answer
    # 3 attempts of 1 s each and standard-mode backoff between them (at most 1 s, then 2 s).
    assert answer["seconds"] < 15, answer
    assert len(silent_server.accepted) == 3, "one connection per attempt: 3 attempts"
    assert (answer["connect"], answer["read"]) == (1.0, 1.0)
    assert answer["retries"] == {"total_max_attempts": 3, "mode": "standard"}

    defaults = last_json(
        run("-c", S3_SIZE.replace("store.size('0' * 64)", "pass"), **{**env, "S3_CONNECT_TIMEOUT": ""})
    )
    assert defaults["connect"] == 5.0


def test_s3_storage_without_a_bucket_is_refused_at_start(run):
    """It started cleanly and the first upload was a 500."""
    message = refusal(run("-c", "import django; django.setup()", ARTIFACT_STORAGE="s3", S3_BUCKET=" "))
    assert "ARTIFACT_STORAGE=s3 needs S3_BUCKET" in message
    assert run("-c", "import django; django.setup()", **S3).returncode == 0


# --- 7: counts, sizes, intervals and timeouts must be more than 0 --------------------------------------

POSITIVE = [
    ("RECONCILE_INTERVAL_SECONDS", "0", " seconds"),
    ("REQUEST_IO_TIMEOUT_SECONDS", "0", " seconds"),
    ("RECONCILE_LEASE_SECONDS", "-1", " seconds"),
    ("RECONCILE_MAX_HOLD_SECONDS", "0", " seconds"),
    ("DEPLOY_TIMEOUT_SECONDS", "0", " seconds"),
    ("WEBHOOK_TIMEOUT_SECONDS", "0", " seconds"),
    ("WEBHOOK_TIMEOUT_SECONDS", "nan", " seconds"),
    ("WEBHOOK_DISPATCH_INTERVAL_SECONDS", "0", " seconds"),
    ("WEBHOOK_SWEEP_INTERVAL_SECONDS", "-30", " seconds"),
    ("WEBHOOK_MAX_ATTEMPTS", "0", ""),
    ("MAX_JSON_BODY_BYTES", "0", " bytes"),
    ("CELERY_TASK_SOFT_TIME_LIMIT", "inf", " seconds"),
    ("DATABASE_CONNECT_TIMEOUT", "0", " seconds"),
    ("S3_CONNECT_TIMEOUT", "0", " seconds"),
    ("S3_READ_TIMEOUT", "-1", " seconds"),
    ("WEBHOOK_RETRY_BASE_SECONDS", "nan", " seconds"),  # timedelta(seconds=nan) broke retry_delay
    ("WEBHOOK_RETRY_MAX_SECONDS", "0", " seconds"),
    ("WEBHOOK_SWEEP_GRACE_SECONDS", "-1", " seconds"),
    ("TASK_MAX_DELIVERIES", "0", ""),
    ("MAX_ARTIFACT_BYTES", "0", " bytes"),
]


@pytest.mark.parametrize(("name", "value", "unit"), POSITIVE)
def test_zero_or_less_is_refused_by_name(run, name, value, unit):
    """RECONCILE_INTERVAL_SECONDS=0 had beat send reconcile_all as fast as it could; 0 or less was taken for each."""
    message = refusal(run("-c", "import django; django.setup()", **{name: value}))
    assert message.endswith(f"{name} must be more than 0{unit}, got {value!r}.")


# --- 8: the broker's visibility timeout is above every task's hard time limit --------------------------

LIMITS = (
    "import django, json; django.setup(); from config.celery import app; app.loader.import_default_modules(); "
    "limits = {name: task.time_limit or app.conf.task_time_limit for name, task in app.tasks.items() "
    "if not name.startswith('celery.')}; "
    "print(json.dumps({'visibility': app.conf.broker_transport_options['visibility_timeout'], 'limits': limits}))"
)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"CELERY_TASK_SOFT_TIME_LIMIT": "7200"},
        {"WEBHOOK_TIMEOUT_SECONDS": "5000"},
        {"RECONCILE_MAX_HOLD_SECONDS": "9000", "RECONCILE_LEASE_SECONDS": "900"},
    ],
)
def test_the_visibility_timeout_outlasts_every_hard_limit_and_the_longest_countdown(run, env):
    """Redis hands an unacknowledged message out again after it: a second run beside the first one."""
    answer = last_json(run("-c", LIMITS, CELERY_BROKER_URL="redis://127.0.0.1:6379/0", **env))
    limits = answer["limits"]
    assert {"governance.deployment_tasks.reconcile_target", "governance.tasks.webhooks_deliver"} <= set(limits)
    assert all(limits.values()), limits  # every task has a hard limit
    longest_countdown = 300  # governance.tasks.WEBHOOK_MAX_COUNTDOWN_SECONDS; a reconcile's backoff is at most 60 s
    for name, hard in limits.items():
        assert answer["visibility"] > hard + longest_countdown, (name, hard, answer["visibility"])
    assert answer["visibility"] >= 3600


# --- 9: docker-compose.yml -----------------------------------------------------------------------------

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(value: str, environment: dict[str, str]) -> str:
    """Compose's interpolation of ${NAME}, ${NAME:-default}, ${NAME:?error} and $$."""

    def one(match: re.Match) -> str:
        if match.group() == "$$":
            return "$"
        name, kind, word = match.groups()
        given = environment.get(name, "")
        if kind == "?" and not given:
            raise AssertionError(f"compose would refuse to start: {word}")
        return given or (word if kind == "-" else "")

    return _VARIABLE.sub(one, str(value))


def test_compose_passes_the_sizing_to_the_containers_and_gives_them_time_to_stop():
    services = COMPOSE["services"]
    app_env = COMPOSE["x-app-env"]
    assert {"web", "worker", "webhook-worker", "beat"} <= set(services)
    for name in ("web", "worker", "webhook-worker", "beat"):
        assert services[name]["environment"]["ALLOWED_HOSTS"] == app_env["ALLOWED_HOSTS"]
    assert interpolate(app_env["WEB_CONCURRENCY"], {"WEB_CONCURRENCY": "6"}) == "6"
    assert interpolate(app_env["GUNICORN_THREADS"], {}) == "4"
    assert "WEB_CONCURRENCY" in " ".join(services["web"]["command"])

    def seconds(duration: str) -> int:
        number, unit = re.fullmatch(r"(\d+)([sm])", duration).groups()
        return int(number) * (60 if unit == "m" else 1)

    web = seconds(services["web"]["stop_grace_period"])
    assert web >= 60
    assert seconds(services["worker"]["stop_grace_period"]) > web
    assert seconds(services["webhook-worker"]["stop_grace_period"]) > web


HEALTHZ = (
    "import django, json, sys; django.setup(); from django.test import Client; "
    "r = Client().get(sys.argv[1], HTTP_HOST=sys.argv[2]); print(json.dumps(r.status_code))"
)


def test_compose_web_health_check_passes_with_an_operators_allowed_hosts(run, tmp_path, database_url):
    """ALLOWED_HOSTS=registry.example.com (as the docs suggest) made the health check's 127.0.0.1 a 400: web never
    healthy, worker and beat never started. The compose environment also passes the startup checks (S3 storage)."""
    operator = {"SECRET_KEY": PRODUCTION["SECRET_KEY"], "ALLOWED_HOSTS": "registry.example.com"}
    env = {name: interpolate(value, operator) for name, value in COMPOSE["x-app-env"].items()}
    assert "registry.example.com" in env["ALLOWED_HOSTS"].split(",")
    # The compose network's servers are this machine's here (nothing connects to them for /healthz).
    env.update(
        DATABASE_URL=database_url(),
        CELERY_BROKER_URL=os.environ["CELERY_BROKER_URL"],
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
    )
    [probe] = [line for line in COMPOSE["services"]["web"]["healthcheck"]["test"] if "urlopen" in line]
    [base] = re.findall(r"'(http://[^']+)'", probe)
    paths = re.findall(r"'(/\w+)'", probe)
    assert paths == ["/healthz", "/readyz"]
    host = urlsplit(base).netloc
    assert run("-c", HEALTHZ, "/healthz", host, **env).stdout.splitlines()[-1] == "200"
    assert run("manage.py", "check", **env).returncode == 0


# --- 10: gunicorn's own log lines are JSON when LOG_FORMAT=json ----------------------------------------


def test_every_gunicorn_log_line_is_json_in_production(tmp_path, database_url):
    """Boot, worker start and exit were plain text lines in a stream of JSON ones. An access log asked for
    (--access-logfile, as bench/ reads server times from) keeps its own format: it went missing for a while."""
    port = processes.free_port()
    env = {
        **os.environ,
        **PRODUCTION,
        **LOCAL,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url(),
        "LOG_FORMAT": "",  # json: the default with debug off
    }
    env.pop("TEST_DATABASE_NAME", None)
    stdout, stderr, access = tmp_path / "stdout.log", tmp_path / "stderr.log", tmp_path / "access.log"
    command = [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "-w", "2"]
    command += ["--access-logfile", str(access), "--access-logformat", "%(m)s %(U)s %(s)s"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout.open("w"), stderr=stderr.open("w"))  # noqa: S603

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:  # noqa: S310
                return answer.status == 200
        except OSError:
            assert proc.poll() is None, f"gunicorn exited:\n{stderr.read_text()[-3000:]}"
            return False

    try:
        processes.wait(up, 60, "gunicorn to answer /healthz", interval=0.2)
    finally:
        processes.stop(proc)
    lines = [line for line in stderr.read_text().splitlines() if line.strip()]
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line in gunicorn's stderr: {line!r}")
    records = [json.loads(line) for line in lines]
    gunicorn = [record["message"] for record in records if record["logger"] == "gunicorn.error"]
    assert any(message.startswith("Starting gunicorn") for message in gunicorn), gunicorn
    assert sum(message.startswith("Booting worker") for message in gunicorn) == 2, gunicorn
    assert any(message.startswith("Worker exiting") for message in gunicorn), gunicorn
    assert not any(record["logger"] == "gunicorn.access" for record in records)  # core.access writes those
    assert not stdout.read_text().strip()
    assert "GET /healthz 200" in access.read_text().splitlines()
