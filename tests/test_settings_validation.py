"""Settings refuse what they cannot honour, naming the variable, instead of silently running on something
else: each case starts a real Python process on config.settings with the environment under test."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRINT = "import django, json; django.setup(); from django.conf import settings as s; print(json.dumps({names}))"
# A PostgreSQL and a Redis that nobody connects to: `check` (without --database) and loading the WSGI
# application never open a connection. Artifacts on local disk, named outright (unnamed, core.E003 refuses it).
SERVERS = {
    "DATABASE_URL": "postgres://registry@127.0.0.1:9/registry",
    "CELERY_BROKER_URL": "redis://127.0.0.1:9/0",
    "ARTIFACT_STORAGE": "local",
}
PRODUCTION = {"DJANGO_DEBUG": "0", "SECRET_KEY": "settings-validation-" + "x" * 40}


@pytest.fixture
def run(tmp_path):
    def run(*args: str, unset: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
        full = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DATA_DIR": str(tmp_path), **env}
        for name in unset:
            full.pop(name, None)
        return subprocess.run(  # noqa: S603
            [sys.executable, *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=120
        )

    return run


def settings_of(run, *names: str, **env: str) -> dict:
    expression = "{" + ", ".join(f"{name!r}: s.{name}" for name in names) + "}"
    result = run("-c", PRINT.format(names=expression), **env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def refusal(result: subprocess.CompletedProcess) -> str:
    """The last line of the traceback: the ImproperlyConfigured message itself."""
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: "), result.stderr[-2000:]
    return last


def test_booleans_take_a_vocabulary_in_any_case(run):
    values = settings_of(
        run,
        "SESSION_COOKIE_SECURE",
        "SECURE_SSL_REDIRECT",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_PRELOAD",
        SESSION_COOKIE_SECURE="YES",
        SECURE_SSL_REDIRECT=" Off ",
        CSRF_COOKIE_SECURE="true",
        SECURE_HSTS_PRELOAD="0",
    )
    assert values == {
        "SESSION_COOKIE_SECURE": True,
        "SECURE_SSL_REDIRECT": False,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_PRELOAD": False,
    }


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SESSION_COOKIE_SECURE", "y", "SESSION_COOKIE_SECURE must be one of 1/0, true/false, yes/no, on/off, got 'y'"),
        ("SECURE_SSL_REDIRECT", "enabled", "SECURE_SSL_REDIRECT must be one of 1/0, true/false, yes/no, on/off"),
        ("CSRF_COOKIE_SECURE", "ture", "CSRF_COOKIE_SECURE must be one of 1/0, true/false, yes/no, on/off, got 'ture'"),
        ("RECONCILE_INTERVAL_SECONDS", "30s", "RECONCILE_INTERVAL_SECONDS must be a whole number, got '30s'"),
        ("MAX_JSON_BODY_BYTES", "1MB", "MAX_JSON_BODY_BYTES must be a whole number, got '1MB'"),
        ("WEBHOOK_DISPATCH_INTERVAL_SECONDS", "5s", "WEBHOOK_DISPATCH_INTERVAL_SECONDS must be a number, got '5s'"),
        ("ARTIFACT_STORAGE", "S4", "ARTIFACT_STORAGE must be local or s3, got 'S4'"),
        ("LOG_LEVEL", "verbose", "LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got 'verbose'"),
        ("AXES_COOLOFF_MINUTES", "0", "AXES_COOLOFF_MINUTES must be at least 1, got '0'"),
        ("TRUSTED_PROXY_COUNT", "-1", "TRUSTED_PROXY_COUNT must be 0 or more, got -1"),
    ],
)
def test_malformed_values_are_refused_by_name(run, name, value, expected):
    assert expected in refusal(run("-c", "import django; django.setup()", **{name: value}))


def test_log_level_takes_the_names_logging_takes(run):
    """`WARN` and `FATAL` are logging's own aliases; an operator's LOG_LEVEL=WARN worked before validation."""
    probe = (
        "import django, json, logging; django.setup(); "
        "print(json.dumps([logging.getLogger().level, logging.getLogger('botocore').level]))"
    )
    for given, root in (("WARN", logging.WARNING), ("fatal", logging.CRITICAL), ("debug", logging.DEBUG)):
        result = run("-c", probe, LOG_LEVEL=given)
        assert result.returncode == 0, result.stderr[-2000:]
        levels = json.loads(result.stdout.splitlines()[-1])
        assert levels == [root, max(root, logging.INFO)], given


def test_webhook_delivery_settings_come_from_the_environment(run):
    """docs/webhooks.md lists them as environment variables; they were read only as Django settings."""
    names = ("WEBHOOK_MAX_ATTEMPTS", "WEBHOOK_TIMEOUT_SECONDS", "WEBHOOK_RETRY_BASE_SECONDS")
    given = {"WEBHOOK_MAX_ATTEMPTS": "3", "WEBHOOK_TIMEOUT_SECONDS": "2.5", "WEBHOOK_RETRY_BASE_SECONDS": "1"}
    assert settings_of(run, *names, **given) == {
        "WEBHOOK_MAX_ATTEMPTS": 3,
        "WEBHOOK_TIMEOUT_SECONDS": 2.5,
        "WEBHOOK_RETRY_BASE_SECONDS": 1.0,
    }


def test_webhook_allowed_networks_are_cidrs_and_debug_adds_loopback(run):
    """A typo in the networks internal receivers live on stops startup, naming it, instead of refusing them later."""
    setup = ("-c", "import django; django.setup()")
    for value in ("10.0.0.0/33", "10.0.0.1/8", "intranet"):
        message = refusal(run(*setup, WEBHOOK_ALLOWED_NETWORKS=f"192.168.0.0/16,{value}"))
        assert "WEBHOOK_ALLOWED_NETWORKS must be comma-separated networks such as 10.0.0.0/8" in message
        assert repr(value) in message
    given = {"WEBHOOK_ALLOWED_NETWORKS": " 10.0.0.0/8, fd00::/8,192.0.2.7"}
    production = settings_of(run, "WEBHOOK_ALLOWED_NETWORKS", **PRODUCTION, **given)
    assert production == {"WEBHOOK_ALLOWED_NETWORKS": ["10.0.0.0/8", "fd00::/8", "192.0.2.7/32"]}
    unset = ("WEBHOOK_ALLOWED_NETWORKS",)
    assert settings_of(run, "WEBHOOK_ALLOWED_NETWORKS", unset=unset, **PRODUCTION) == {"WEBHOOK_ALLOWED_NETWORKS": []}
    debug = settings_of(run, "WEBHOOK_ALLOWED_NETWORKS", unset=unset, DJANGO_DEBUG="1")
    assert debug == {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8", "::1/128"]}


def test_artifact_storage_is_case_insensitive(run):
    assert settings_of(run, "ARTIFACT_STORAGE", ARTIFACT_STORAGE="S3", S3_BUCKET="b") == {"ARTIFACT_STORAGE": "s3"}
    assert settings_of(run, "ARTIFACT_STORAGE", ARTIFACT_STORAGE=" Local ") == {"ARTIFACT_STORAGE": "local"}
    assert settings_of(run, "ARTIFACT_STORAGE", ARTIFACT_STORAGE="") == {"ARTIFACT_STORAGE": "local"}


def test_prometheus_multiproc_dir_must_be_a_writable_directory(run, tmp_path):
    setup = ("-c", "import django; django.setup()")
    missing = refusal(run(*setup, PROMETHEUS_MULTIPROC_DIR="/nonexistent/prometheus"))
    assert "PROMETHEUS_MULTIPROC_DIR must be an existing, writable directory, got '/nonexistent/prometheus'" in missing
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("")
    assert "PROMETHEUS_MULTIPROC_DIR" in refusal(run(*setup, PROMETHEUS_MULTIPROC_DIR=str(a_file)))
    directory = tmp_path / "prometheus"
    directory.mkdir()
    assert run(*setup, PROMETHEUS_MULTIPROC_DIR=str(directory)).returncode == 0


# --- Production without DATABASE_URL / CELERY_BROKER_URL: refused, but the image's build step still runs ---

DEMO_BACKENDS = ("DATABASE_URL", "CELERY_BROKER_URL")


def test_production_refuses_the_demo_database_and_broker(run):
    check = run("manage.py", "check", unset=DEMO_BACKENDS, **PRODUCTION)
    assert check.returncode != 0
    assert "(core.E001) DATABASE_URL is not set" in check.stderr
    assert "(core.E002) CELERY_BROKER_URL is not set" in check.stderr
    assert "ALLOW_EMBEDDED_BACKENDS=1" in check.stderr

    broker_only = run("manage.py", "check", unset=("CELERY_BROKER_URL",), **PRODUCTION, **SERVERS)
    assert broker_only.returncode != 0
    assert "core.E002" in broker_only.stderr and "core.E001" not in broker_only.stderr

    migrate = run("manage.py", "migrate", "--noinput", unset=DEMO_BACKENDS, **PRODUCTION)
    assert migrate.returncode != 0 and "core.E001" in migrate.stderr and "Applying" not in migrate.stdout

    # gunicorn runs no system checks: loading the WSGI application (what each worker does at boot) fails.
    web = run("-c", "from config.wsgi import application", unset=DEMO_BACKENDS, **PRODUCTION)
    assert "DATABASE_URL is not set" in refusal(web) and "CELERY_BROKER_URL is not set" in refusal(web)


def test_production_with_servers_or_the_opt_out_starts(run):
    assert run("manage.py", "check", **PRODUCTION, **SERVERS).returncode == 0
    web = run("-c", "from config.wsgi import application", **PRODUCTION, **SERVERS)
    assert web.returncode == 0, web.stderr[-2000:]
    opted = run("manage.py", "check", unset=DEMO_BACKENDS, ALLOW_EMBEDDED_BACKENDS="1", **PRODUCTION)
    assert opted.returncode == 0, opted.stderr[-2000:]
    # Debug (the demo, the tests) keeps the embedded defaults without being asked.
    assert run("manage.py", "check", unset=DEMO_BACKENDS, DJANGO_DEBUG="1").returncode == 0


def test_eager_tasks_need_no_broker(run):
    """CELERY_TASK_ALWAYS_EAGER runs tasks in the web process: no broker is used, so none is asked for."""
    eager = run(
        "manage.py",
        "check",
        unset=("CELERY_BROKER_URL",),
        CELERY_TASK_ALWAYS_EAGER="1",
        **PRODUCTION,
        **{"DATABASE_URL": SERVERS["DATABASE_URL"], "ARTIFACT_STORAGE": "local"},
    )
    assert eager.returncode == 0, eager.stderr[-2000:]


def test_the_image_build_step_runs_without_a_database(run, tmp_path):
    """The Dockerfile's `collectstatic` runs with DJANGO_DEBUG=0, a dummy key and no DATABASE_URL."""
    built = run(
        "manage.py",
        "collectstatic",
        "--noinput",
        unset=DEMO_BACKENDS,
        DJANGO_DEBUG="0",
        SECRET_KEY="build-time-dummy-key-not-used-at-runtime",
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert (tmp_path / "static" / "staticfiles.json").exists()
