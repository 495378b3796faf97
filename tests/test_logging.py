"""Structured logs: the project's LOGGING configuration (with LOG_FORMAT=json) writes one JSON object
per line carrying the request id and actor of real HTTP requests — the same request id the audit event
of that request stores — and Celery task lines carry the task name and id. API tokens never appear."""

import contextlib
import copy
import io
import json
import logging
import logging.config
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.test import Client

from accounts.models import ApiToken
from audit.models import AuditEvent
from config.celery import app as celery_app
from core import context
from governance import deployment, webhooks
from governance import tasks as governance_tasks
from registry import services as registry_services
from tests.webhooks.conftest import register

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def logging_into_buffer(log_format: str):
    """The project's LOGGING dict, as configured for LOG_FORMAT=`log_format`, writing into a buffer."""
    buffer = io.StringIO()
    config = copy.deepcopy(django_settings.LOGGING)
    config["handlers"]["console"].update(formatter=log_format, stream=buffer)
    logging.config.dictConfig(config)
    try:
        yield buffer
    finally:
        logging.config.dictConfig(django_settings.LOGGING)


@pytest.fixture
def log_lines():
    """The JSON log records of what the test does."""
    with logging_into_buffer("json") as buffer:

        def lines() -> list[dict]:
            return [json.loads(line) for line in buffer.getvalue().splitlines()]  # each line one JSON object

        lines.raw = buffer
        yield lines


def test_request_log_lines_carry_request_id_and_actor_matching_the_audit_event(personas, log_lines):
    owner = personas["owner"]
    # A secret in a query string (an unknown parameter: refused) must not reach the logs either.
    refused = owner.client().post("/api/v1/models/?token=" + owner.token, {"namespace": "acme", "name": "x"})
    assert refused.status_code == 400 and "token" in refused.json()["error"]["detail"]
    r = owner.client().post(
        "/api/v1/models/", {"namespace": "acme", "name": "logged"}, format="json", HTTP_X_REQUEST_ID="obs-req-0001"
    )
    assert r.status_code == 201, r.json()
    assert r["X-Request-ID"] == "obs-req-0001"
    event = AuditEvent.objects.get(action="model.created", subject_repr__contains="logged")
    assert event.request_id == "obs-req-0001"

    lines = log_lines()
    [access] = [line for line in lines if line["logger"] == "core.access" and line["request_id"] == "obs-req-0001"]
    token = ApiToken.objects.get(user=owner.user)
    assert access["actor"] == "owner" and access["token_id"] == token.pk
    assert (access["method"], access["path"], access["status"]) == ("POST", "/api/v1/models/", 201)
    assert access["view"] == r.wsgi_request.resolver_match.view_name and isinstance(access["duration_ms"], float)
    assert access["level"] == "INFO" and access["ts"].endswith("Z")
    assert owner.token not in log_lines.raw.getvalue()

    # A second request gets its own id; an anonymous request is logged with actor "-" or "anonymous".
    assert Client(HTTP_HOST="localhost").get("/api/v1/models/").status_code == 401
    anonymous = [line for line in log_lines() if line.get("path") == "/api/v1/models/" and line["status"] == 401]
    assert len(anonymous) == 1
    assert anonymous[0]["request_id"] not in ("obs-req-0001", "-") and anonymous[0]["actor"] in ("-", "anonymous")


def test_secrets_in_messages_and_extras_are_masked(personas, log_lines):
    token = personas["ci_bot"].token
    logging.getLogger("tests.careless").warning("calling with %s", token, extra={"header": f"Bearer {token}"})
    logging.getLogger("tests.careless").error("webhook secret whsec_c2VjcmV0c2VjcmV0c2VjcmV0 leaked")
    raw = log_lines.raw.getvalue()
    assert token not in raw and "c2VjcmV0c2VjcmV0" not in raw
    careless = [line for line in log_lines() if line["logger"] == "tests.careless"]
    prefix = token.split("_")[1]
    assert careless[0]["message"] == f"calling with mgr_{prefix}_***"  # the public prefix still names it
    assert careless[0]["header"] == f"Bearer mgr_{prefix}_***"
    assert careless[1]["message"] == "webhook secret whsec_*** leaked"


def test_credentials_inside_urls_are_masked_in_log_lines(log_lines):
    logging.getLogger("tests.careless").warning(
        "cloning %s, then %s",
        "https://oauth2:SeCrEt1@gitlab.example.com/a.git",
        "https://SeCrEt3:x-oauth-basic@github.com/a.git",  # GitHub's token as the user name, before a password
        extra={"link": "https://h/x?a=1;%74oken=SeCrEt2"},  # an encoded name, after a ';'
    )
    assert "SeCrEt" not in log_lines.raw.getvalue()
    (line,) = [line for line in log_lines() if line["logger"] == "tests.careless"]
    assert line["message"] == "cloning https://***@gitlab.example.com/a.git, then https://***@github.com/a.git"
    assert line["link"] == "https://h/x?a=1;%74oken=***"


@pytest.mark.parametrize("form", ["json", "text"])
def test_a_url_after_an_escaped_character_is_masked_and_the_line_stays_whole(form):
    """Masked before the line is escaped or encoded: after an escaped newline the scheme read as `nhttps` and the
    token stayed, and a masked value swallowed the backslash of an encoded quote, which broke the JSON line."""
    with logging_into_buffer(form) as buffer:
        logging.getLogger("tests.escaped").warning('clone failed:\nhttps://ghp_SeCrEt4@github.com/a p;token=x"y')
    text = buffer.getvalue()
    assert "SeCrEt4" not in text and "token=x" not in text
    if form == "json":
        [record] = [json.loads(line) for line in text.splitlines() if "tests.escaped" in line]
        assert record["message"] == 'clone failed:\nhttps://***@github.com/a p;token=***"y'


def test_exceptions_are_one_line_with_the_traceback(log_lines):
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("tests.exc").exception("it failed")
    [line] = [line for line in log_lines() if line["logger"] == "tests.exc"]
    assert line["level"] == "ERROR" and "ValueError: boom" in line["exc_info"] and "Traceback" in line["exc_info"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_celery_task_lines_carry_task_name_and_id(personas, log_lines, settings):
    settings.WEBHOOK_MAX_ATTEMPTS = 1  # fail for good: no retry is sent to the broker
    admin, owner = personas["admin"].user, personas["owner"].user
    model = registry_services.model_create(actor=owner, namespace="acme", name="tasklog")
    webhooks.endpoint_create(
        actor=admin, name="down", url=f"http://127.0.0.1:{_closed_port()}/h", event_types=["version.registered"]
    )
    register(owner, model, "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids
    result = governance_tasks.webhooks_deliver.apply(args=(delivery_id,))
    assert result.get() == "failed"
    [line] = [line for line in log_lines() if line["message"].startswith(f"webhook delivery {delivery_id} ")]
    assert line["level"] == "WARNING" and line["logger"] == "governance.webhooks"
    assert line["task_name"] == "governance.tasks.webhooks_deliver" and line["task_id"] == result.id
    outside = logging.getLogger("tests.outside")
    outside.info("not in a task")
    [plain] = [line for line in log_lines() if line["logger"] == "tests.outside"]
    assert "task_name" not in plain and "task_id" not in plain


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60
    )


SNIPPET = "import logging; logging.getLogger('probe').warning('hello %s', 42)"


def test_log_format_env_selects_json_or_text():
    as_json = _manage("shell", "-c", SNIPPET, LOG_FORMAT="json")
    assert as_json.returncode == 0, as_json.stderr
    [probe] = [json.loads(line) for line in as_json.stderr.splitlines() if '"probe"' in line]
    assert probe["message"] == "hello 42" and probe["level"] == "WARNING" and probe["request_id"] == "-"

    as_text = _manage("shell", "-c", SNIPPET, LOG_FORMAT="text")
    assert as_text.returncode == 0, as_text.stderr
    [line] = [line for line in as_text.stderr.splitlines() if " probe " in line]
    assert line.endswith("WARNING probe [- -] hello 42")

    default_debug = _manage("shell", "-c", SNIPPET, LOG_FORMAT="", DJANGO_DEBUG="1")
    assert any(line.endswith("hello 42") and not line.startswith("{") for line in default_debug.stderr.splitlines())

    default_production = _manage("shell", "-c", SNIPPET, LOG_FORMAT="", DJANGO_DEBUG="0", SECRET_KEY="x" * 50)
    assert default_production.returncode == 0, default_production.stderr
    assert any(
        json.loads(line)["message"] == "hello 42"
        for line in default_production.stderr.splitlines()
        if '"probe"' in line
    )

    wrong = _manage("check", LOG_FORMAT="xml")
    assert wrong.returncode != 0 and "LOG_FORMAT must be json or text" in wrong.stderr


# --- Log forging: nothing a client sends may start a line that reads as a record of its own ----------------

FORGED = "2026-12-06 10:00:00,000 INFO core.access [forged admin] POST /api/v1/targets/prod/rollback 200"
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+ \[")
# A newline, ESC (clears the screen), NEL and U+2028 (line breaks to str.splitlines and some viewers).
HOSTILE_PATH = "/x\n" + FORGED + "\x1b[2J\x85\u2028end"


@pytest.fixture
def text_log():
    """The text log of what the test does, as a buffer."""
    with logging_into_buffer("text") as buffer:
        yield buffer


def test_text_lines_escape_control_characters_in_paths_messages_and_tracebacks(text_log):
    assert Client(HTTP_HOST="localhost").get(quote(HOSTILE_PATH)).status_code == 404
    try:
        raise ValueError("bad input\n" + FORGED)
    except ValueError:
        logging.getLogger("tests.exc").exception("it failed\r\n%s", FORGED)

    lines = text_log.getvalue().splitlines()  # splits on NEL and U+2028 too, as line-based readers may
    assert not any(line.startswith(FORGED) for line in lines), lines
    assert all(RECORD_START.match(line) or line.startswith("    ") for line in lines), lines
    [access] = [line for line in lines if line.split(" ")[3] == "core.access"]
    assert access.endswith(" GET /x\\n" + FORGED + "\\x1b[2J\\x85\\u2028end 404 " + access.rsplit(" ", 1)[1])
    [failed] = [line for line in lines if line.split(" ")[3] == "tests.exc"]
    assert failed.endswith("] it failed\\r\\n" + FORGED)
    # The traceback follows its record, every line indented, its message escaped on one of them.
    traceback = lines[lines.index(failed) + 1 :]
    assert traceback[0] == "    Traceback (most recent call last):"
    assert "    ValueError: bad input" in traceback and "    " + FORGED in traceback


def test_json_lines_stay_one_record_per_line_and_keep_the_path(log_lines):
    assert Client(HTTP_HOST="localhost").get(quote(HOSTILE_PATH)).status_code == 404
    logging.getLogger("tests.separators").warning("a\x85b\u2028c\x7fd\u202ee")
    records = log_lines()  # every line (split as str.splitlines does) must be one whole JSON object
    [access] = [line for line in records if line["logger"] == "core.access"]
    assert access["path"] == HOSTILE_PATH and access["message"].startswith("GET " + HOSTILE_PATH + " 404 ")
    [separators] = [line for line in records if line["logger"] == "tests.separators"]
    assert separators["message"] == "a\x85b\u2028c\x7fd\u202ee"
    raw = log_lines.raw.getvalue()
    assert "\\u0085" in raw and "\\u2028" in raw and "\\u202e" in raw and "\u202e" not in raw


def test_text_lines_escape_bidirectional_overrides(text_log):
    """U+202E shows what follows it right to left: a line could read as something it does not hold."""
    logging.getLogger("tests.bidi").warning("approved by \u202eadmin\u2066x\u2069")
    [line] = [line for line in text_log.getvalue().splitlines() if " tests.bidi " in line]
    assert line.endswith("approved by \\u202eadmin\\u2066x\\u2069")


def test_a_request_id_with_a_trailing_newline_is_replaced(log_lines):
    client = Client(HTTP_HOST="localhost")
    r = client.get("/healthz", HTTP_X_REQUEST_ID="obs-req-newline\n")
    assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", r["X-Request-ID"])
    assert client.get("/healthz", HTTP_X_REQUEST_ID="obs-req-0002")["X-Request-ID"] == "obs-req-0002"


# --- HTTP client libraries at LOG_LEVEL=DEBUG: their request dumps carry signatures and tokens ------------

CLIENTS = """
import logging, socket
import boto3, httpx
from botocore.config import Config
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
logging.getLogger("registry.probe").debug("our own debug line")
s3 = boto3.client(
    "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1", aws_access_key_id="AKIAPINNEDLOGGERS",
    aws_secret_access_key="pinned-loggers-secret-key", aws_session_token="PinnedLoggersSessionToken",
    config=Config(retries={"total_max_attempts": 1}, connect_timeout=2),
)
try:
    s3.list_buckets()
except Exception:
    pass
try:
    httpx.get(f"http://127.0.0.1:{port}/", headers={"Authorization": "Bearer pinned-loggers-httpx-token"})
except httpx.HTTPError:
    pass
"""
CLIENT_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3", "httpx", "httpcore")


def test_http_client_loggers_stay_at_info_when_log_level_is_debug():
    result = _manage("shell", "-c", CLIENTS, LOG_LEVEL="DEBUG", LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(r["message"] == "our own debug line" and r["level"] == "DEBUG" for r in records)  # DEBUG is on
    chatty = [r for r in records if r["logger"].startswith(CLIENT_LOGGERS) and r["level"] == "DEBUG"]
    assert not chatty, chatty[:3]
    for secret in ("PinnedLoggersSessionToken", "Signature=", "pinned-loggers-httpx-token"):
        assert secret not in result.stderr


@celery_app.task(name="tests.lease_keeper_logs")
def _task_with_a_lease_keeper():
    """A reconcile's lease keeper for a target no worker holds (its first renewal finds the claim gone)."""
    keeper = deployment._LeaseKeeper(target_id=2_000_000_000, owner="test:lease", claimed_at=time.monotonic())
    keeper.start()
    keeper.join(10)
    return keeper.lost


@pytest.mark.django_db(transaction=True)  # the keeper's thread has a connection of its own
def test_a_thread_a_task_starts_logs_with_its_task_and_request_id(log_lines, settings):
    """The lease keeper's warnings (a contested or hung deploy) named no task and no request: Celery's current task
    is a thread-local, and the request id a contextvar a new thread does not inherit."""
    settings.RECONCILE_LEASE_SECONDS = 0.3
    token = context.request_id.set("req-lease-0001")
    try:
        result = _task_with_a_lease_keeper.apply()
    finally:
        context.request_id.reset(token)
    assert result.get() == "another worker took its claim on the target"
    [line] = [line for line in log_lines() if "it stops before its next write" in line["message"]]
    assert line["task_name"] == "tests.lease_keeper_logs" and line["task_id"] == result.id
    assert line["request_id"] == "req-lease-0001"
