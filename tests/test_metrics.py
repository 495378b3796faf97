"""/metrics over real HTTP requests (Django test client): access rules, and each metric family after
the real action it counts — requests, releases made by the governance services, a reconcile that finds
drift on a Replicate deployment (official client against the local wire-compatible fake), Celery tasks
run through Celery's own tracer, and a webhook attempt against a closed port."""

import asyncio
import copy
import hashlib
import io
import json
import logging
import logging.config
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.http import StreamingHttpResponse
from django.test import AsyncClient, Client
from django.urls import path, resolve
from prometheus_client.parser import text_string_to_metric_families

from audit.models import AuditEvent
from config.urls import urlpatterns as project_urlpatterns
from core import metrics
from governance import deployment_tasks, webhooks
from governance import services as governance_services
from governance.hosts import HOSTS
from governance.hosts.base import ReleaseSpec
from governance.models import Release
from registry import services as registry_services
from registry.models import RegisteredModel
from tests.fakes.replicate_server import ReplicateServer

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
METRICS_TOKEN = "metrics-scrape-token-for-tests"
R_TOKEN = "r8_MetricsTestTokenNeverLogged0123456789"
V1, V2 = "1a" * 32, "2b" * 32


@pytest.fixture
def scrape(settings):
    settings.METRICS_TOKEN = METRICS_TOKEN
    client = Client(HTTP_HOST="localhost")

    def get() -> dict[tuple[str, tuple], float]:
        r = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")
        assert r.status_code == 200, r.content
        assert r["Content-Type"].startswith("text/plain")
        samples = {}
        for family in text_string_to_metric_families(r.content.decode()):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    return get


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_access_rules(settings):
    client = Client(HTTP_HOST="localhost")
    settings.METRICS_TOKEN = METRICS_TOKEN
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Token {METRICS_TOKEN}").status_code == 401
    ok = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")
    assert ok.status_code == 200 and b"registry_http_request_duration_seconds" in ok.content
    assert METRICS_TOKEN.encode() not in ok.content
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}").status_code == 405

    settings.METRICS_TOKEN = ""
    settings.DEBUG = False
    closed = client.get("/metrics")
    assert closed.status_code == 403 and b"METRICS_TOKEN" in closed.content
    settings.DEBUG = True
    assert client.get("/metrics").status_code == 200


def test_metrics_is_exempt_from_the_https_redirect(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.METRICS_TOKEN = METRICS_TOKEN
    client = Client(HTTP_HOST="localhost")
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}").status_code == 200
    assert client.get("/api/v1/models/").status_code == 301  # everything else is still redirected


def test_request_latency_is_labelled_by_view_never_by_path(personas, scrape):
    owner = personas["owner"].client()
    assert owner.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    detail = "/api/v1/models/acme/churn"
    view = resolve(detail).view_name
    before = scrape()
    for _ in range(3):
        assert owner.get(detail).status_code == 200
    assert owner.get("/api/v1/models/acme/no-such-model").status_code == 404
    assert Client(HTTP_HOST="localhost").get("/no/such/page/4711").status_code == 404
    after = scrape()

    name = "registry_http_request_duration_seconds_count"
    ok = {"view": view, "method": "GET", "status": "2xx"}
    assert value(after, name, **ok) - value(before, name, **ok) == 3
    missing = {"view": view, "method": "GET", "status": "4xx"}
    assert value(after, name, **missing) - value(before, name, **missing) == 1
    unmatched = {"view": "<unmatched>", "method": "GET", "status": "4xx"}
    assert value(after, name, **unmatched) - value(before, name, **unmatched) == 1
    buckets = [
        v
        for (n, labels), v in after.items()
        if n == "registry_http_request_duration_seconds_bucket" and dict(labels)["view"] == view
    ]
    assert buckets and max(buckets) >= 3  # the +Inf bucket holds every observation
    label_values = {v for (n, labels) in after for _, v in labels if n.startswith("registry_http")}
    assert not any("acme" in v or "4711" in v or "/" in v for v in label_values), label_values


# --- Streamed responses: measured and logged when the body has been sent --------------------------------


def _slow_stream(request):
    def body():
        for _ in range(3):
            time.sleep(0.1)
            yield b"chunk\n"

    return StreamingHttpResponse(body(), content_type="text/plain")


def _broken_stream(request):
    def body():
        yield b"first line\n"
        raise RuntimeError("the export failed half way")

    return StreamingHttpResponse(body(), content_type="text/plain")


def _async_stream(request):
    async def body():
        for _ in range(2):
            yield b"async\n"

    return StreamingHttpResponse(body(), content_type="text/plain")


# The project's URLs plus streamed test views (settings.ROOT_URLCONF = __name__ in the tests using them).
urlpatterns = [
    path("tests/slow-stream", _slow_stream, name="tests-slow-stream"),
    path("tests/broken-stream", _broken_stream, name="tests-broken-stream"),
    path("tests/async-stream", _async_stream, name="tests-async-stream"),
    *project_urlpatterns,
]


@pytest.fixture
def access_lines():
    """The access log (the project's LOGGING, LOG_FORMAT=json) of the requests the test makes."""
    buffer = io.StringIO()
    config = copy.deepcopy(django_settings.LOGGING)
    config["handlers"]["console"].update(formatter="json", stream=buffer)
    logging.config.dictConfig(config)
    yield lambda: [r for r in map(json.loads, buffer.getvalue().splitlines()) if r["logger"] == "core.access"]
    logging.config.dictConfig(django_settings.LOGGING)


def test_a_streamed_response_is_measured_when_its_body_has_been_sent(settings, scrape, access_lines):
    settings.ROOT_URLCONF = __name__
    client = Client(HTTP_HOST="localhost")
    count, total = "registry_http_request_duration_seconds_count", "registry_http_request_duration_seconds_sum"
    ok = {"view": "tests-slow-stream", "method": "GET", "status": "2xx"}
    before = scrape()

    r = client.get("/tests/slow-stream", HTTP_X_REQUEST_ID="obs-stream-0001")
    assert r.status_code == 200 and r.streaming
    assert value(scrape(), count, **ok) == value(before, count, **ok)  # nothing sent yet, nothing measured
    assert not [line for line in access_lines() if line["request_id"] == "obs-stream-0001"]
    time.sleep(0.2)  # a slow client
    assert b"".join(r.streaming_content) == b"chunk\n" * 3

    after = scrape()
    assert value(after, count, **ok) - value(before, count, **ok) == 1
    assert value(after, total, **ok) - value(before, total, **ok) >= 0.5
    [line] = [line for line in access_lines() if line["request_id"] == "obs-stream-0001"]
    assert line["status"] == 200 and line["duration_ms"] >= 500 and line["view"] == "tests-slow-stream"


def test_an_error_while_streaming_is_a_5xx(settings, scrape, access_lines):
    settings.ROOT_URLCONF = __name__
    failed = {"view": "tests-broken-stream", "method": "GET", "status": "5xx"}
    sent = {**failed, "status": "2xx"}
    name = "registry_http_request_duration_seconds_count"
    before = scrape()
    r = Client(HTTP_HOST="localhost").get("/tests/broken-stream", HTTP_X_REQUEST_ID="obs-stream-0002")
    assert r.status_code == 200  # the status line has gone out; the body breaks off
    with pytest.raises(RuntimeError, match="half way"):
        b"".join(r.streaming_content)
    after = scrape()
    assert value(after, name, **failed) - value(before, name, **failed) == 1
    assert value(after, name, **sent) == value(before, name, **sent)
    [line] = [line for line in access_lines() if line["request_id"] == "obs-stream-0002"]
    assert line["status"] == 500


def test_an_async_streamed_body_stays_async_and_is_measured(settings, access_lines):
    """The wrapper of an async body was iterable both ways; Django took it for a sync body, and sending it
    raised TypeError ('async_generator' object is not an iterator), logged as a 500."""
    settings.ROOT_URLCONF = __name__

    async def fetch():
        r = await AsyncClient(headers={"Host": "localhost", "X-Request-ID": "obs-stream-0003"}).get(
            "/tests/async-stream"
        )
        assert r.status_code == 200 and r.is_async
        return b"".join([chunk async for chunk in r.streaming_content])

    assert asyncio.run(fetch()) == b"async\n" * 2
    [line] = [line for line in access_lines() if line["path"] == "/tests/async-stream"]
    assert (line["status"], line["view"]) == (200, "tests-async-stream")


def test_an_audit_export_is_logged_with_its_own_request_id_and_actor(personas, access_lines):
    auditor = personas["auditor"]
    registry_services.model_create(actor=personas["owner"].user, namespace="acme", name="exported")
    export = auditor.client().get("/api/v1/audit/events?format=ndjson", HTTP_X_REQUEST_ID="obs-export-0001")
    assert export.status_code == 200 and export.streaming
    # Another request runs before the export's body is sent (as a thread of a gunicorn worker would).
    assert Client(HTTP_HOST="localhost").get("/healthz", HTTP_X_REQUEST_ID="obs-probe-0001").status_code == 200
    assert not [line for line in access_lines() if line["request_id"] == "obs-export-0001"]
    body = b"".join(export.streaming_content)
    assert b"model.created" in body
    [line] = [line for line in access_lines() if line["path"] == "/api/v1/audit/events"]
    assert (line["request_id"], line["actor"], line["status"]) == ("obs-export-0001", "auditor", 200)


# --- A metric that cannot be written never changes a response ---------------------------------------------

BROKEN_METRICS = """
import json, os, shutil, sys
import django
django.setup()
from django.test import Client
shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"])  # the directory goes away under the running process
client = Client(HTTP_HOST="localhost", raise_request_exception=False)  # a 500, as a server would answer
statuses = [client.get("/healthz").status_code for _ in range(3)]
created = client.post(
    "/api/v1/models/", {"namespace": "acme", "name": "unmeasured"}, content_type="application/json",
    HTTP_AUTHORIZATION="Bearer " + sys.stdin.read().strip(),
)
print(json.dumps(statuses + [created.status_code]))
"""


def test_a_failing_metric_never_changes_the_response(transactional_db, personas, tmp_path):
    if connection.vendor != "postgresql":
        pytest.fail("the process shares the test database: run on PostgreSQL")
    db = connection.settings_dict
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_DEBUG": "1",
        "SECRET_KEY": django_settings.SECRET_KEY,
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "LOG_FORMAT": "json",
    }
    env.pop("TEST_DATABASE_NAME", None)
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", BROKEN_METRICS],
        cwd=ROOT,
        env=env,
        input=personas["owner"].token,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [200, 200, 200, 201]
    assert RegisteredModel.objects.filter(namespace="acme", name="unmeasured").exists()
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    failures = [r for r in records if r["logger"] == "core.metrics"]
    assert len(failures) == 1 and failures[0]["level"] == "ERROR", failures  # once, not per request
    assert "FileNotFoundError" in failures[0]["exc_info"]


def _register(actor, model, seed: str, host_revision: str):
    data = seed.encode()
    manifest = {"files": [{"path": "model.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}
    content = registry_services.VersionContent(manifest=manifest, artifact_uri=f"s3://bucket/{seed}@{host_revision}")
    version, _ = registry_services.version_register(actor=actor, model=model, content=content)
    return version


@pytest.fixture
def replicate_world(personas, monkeypatch):
    """acme/clf v1 and a Replicate target backed by the local fake, needing one reviewer approval."""
    monkeypatch.setenv("METRICS_TEST_R_TOKEN", R_TOKEN)
    with ReplicateServer(token=R_TOKEN, username="acme", seed=3) as server:
        server.add_version("acme/clf", V1)
        server.add_version("acme/clf", V2)
        admin, owner = personas["admin"].user, personas["owner"].user
        model = registry_services.model_create(actor=owner, namespace="acme", name="clf")
        config = {"owner": "acme", "deployment": "clf-prod", "model": "acme/clf", "base_url": server.url}
        target = governance_services.target_create(
            actor=admin,
            name="clf-prod",
            kind="replicate",
            stage="production",
            config=config,
            policy={"approvals_required": 1, "approver_groups": ["reviewers"]},
            credentials_ref="env:METRICS_TEST_R_TOKEN",
        )
        version = _register(owner, model, "v1", V1)
        yield {"server": server, "target": target, "version": version, "config": config, **personas}


def test_releases_drift_and_celery_tasks(replicate_world, scrape):
    w = replicate_world
    task = deployment_tasks.reconcile_target.name
    before = scrape()
    assert value(before, "registry_database_collector_up") == 1
    assert value(before, "registry_releases", state="pending") == 0

    request = governance_services.promotion_request(actor=w["owner"].user, version=w["version"], target=w["target"])
    governance_services.promotion_approve(actor=w["reviewer"].user, request_id=request.pk, comment="ship")
    pending = scrape()
    assert value(pending, "registry_releases", state="pending") == 1
    assert value(pending, "registry_releases", state="live") == 0

    # The reconcile task, run through Celery's tracer in this process (task_prerun/postrun fire as on a worker).
    assert deployment_tasks.reconcile_target.apply(args=(w["target"].pk,)).get() == "converged"
    live = scrape()
    assert value(live, "registry_releases", state="pending") == 0
    assert value(live, "registry_releases", state="live") == 1
    succeeded = {"task": task, "outcome": "success"}
    assert (
        value(live, "registry_celery_tasks_total", **succeeded)
        - value(before, "registry_celery_tasks_total", **succeeded)
        == 1
    )
    count = "registry_celery_task_duration_seconds_count"
    assert value(live, count, **succeeded) - value(before, count, **succeeded) == 1
    assert value(live, "registry_celery_task_duration_seconds_sum", **succeeded) > value(
        before, "registry_celery_task_duration_seconds_sum", **succeeded
    )
    assert value(live, "registry_reconcile_drift_total") == 0

    # Someone changes the deployment behind the registry's back: the next reconcile finds drift and repairs it.
    host = HOSTS["replicate"].adapter()
    spec = ReleaseSpec(
        target="clf-prod",
        config=w["config"],
        credentials=R_TOKEN,
        release_number=99,
        model="acme/clf",
        version_number=2,
        host_revision=V2,
    )
    host.deploy(spec)
    assert deployment_tasks.reconcile_target.apply(args=(w["target"].pk,)).get() == "converged"
    drifted = scrape()
    assert AuditEvent.objects.filter(action=metrics.DRIFT_ACTION).count() == 1
    assert value(drifted, "registry_reconcile_drift_total") == 1
    assert value(drifted, "registry_releases", state="live") == 1
    assert w["server"].deployment("acme", "clf-prod")["current_release"]["version"] == V1

    # A task that raises (here: a malformed id the ORM rejects) is counted as a failure.
    assert deployment_tasks.reconcile_target.apply(args=("not-an-id",)).failed()
    failed = scrape()
    failure = {"task": task, "outcome": "failure"}
    assert (
        value(failed, "registry_celery_tasks_total", **failure)
        - value(drifted, "registry_celery_tasks_total", **failure)
        == 1
    )
    assert Release.objects.filter(state="live").count() == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_webhook_delivery_failures(personas, scrape, settings):
    settings.WEBHOOK_MAX_ATTEMPTS = 2
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.05
    admin, owner = personas["admin"].user, personas["owner"].user
    url = f"http://127.0.0.1:{_closed_port()}/hook"
    model = registry_services.model_create(actor=owner, namespace="acme", name="hooked")
    webhooks.endpoint_create(actor=admin, name="down", url=url, event_types=["version.registered"])
    _register(owner, model, "hooked-v1", V1)
    before = scrape()
    [delivery_id] = webhooks.dispatch().delivery_ids
    assert (
        value(scrape(), "registry_webhook_deliveries", state="pending")
        == value(before, "registry_webhook_deliveries", state="pending") + 1
    )

    first = webhooks.deliver(delivery_id=delivery_id)
    assert first.state == "pending" and first.status is None and first.error  # connection refused, retry later
    after_one = scrape()
    name = "registry_webhook_delivery_failures_total"
    assert value(after_one, name) - value(before, name) == 1

    time.sleep(first.retry_in + 0.02)
    assert webhooks.deliver(delivery_id=delivery_id).state == "failed"  # the last allowed attempt
    after_two = scrape()
    assert value(after_two, name) - value(before, name) == 2
    assert value(after_two, "registry_webhook_deliveries", state="failed") == 1
    assert value(after_two, "registry_webhook_deliveries", state="pending") == value(
        before, "registry_webhook_deliveries", state="pending"
    )


# --- Several processes: gunicorn workers and Celery prefork children share PROMETHEUS_MULTIPROC_DIR ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - localhost (a busy machine is slow)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def _samples(text: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _wait(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_multiprocess_gunicorn_and_prefork_worker(transactional_db, tmp_path):
    """Two gunicorn workers and a prefork worker with two children write to one PROMETHEUS_MULTIPROC_DIR:
    one scrape of /metrics (answered by either gunicorn worker) sums them all, and the worker's own
    exporter (WORKER_METRICS_PORT) serves the children's task counts."""
    if connection.vendor != "postgresql":
        pytest.fail("the processes share the test database: run on PostgreSQL")
    redis_server = shutil.which("redis-server")
    assert redis_server, "redis-server is not installed"
    db = connection.settings_dict
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    redis_port, web_port, worker_port = _free_port(), _free_port(), _free_port()
    env = {
        **os.environ,
        "DJANGO_DEBUG": "1",
        "SECRET_KEY": django_settings.SECRET_KEY,
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",  # a private broker: no other run's tasks
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "METRICS_TOKEN": METRICS_TOKEN,
        "WORKER_METRICS_PORT": str(worker_port),
        "WORKER_METRICS_ADDR": "127.0.0.1",
        "LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("TEST_DATABASE_NAME", None)
    logs = {name: tmp_path / f"{name}.log" for name in ("redis", "web", "worker")}
    procs = []

    def start(name, command):
        proc = subprocess.Popen(  # noqa: S603
            command, cwd=ROOT, env=env, stdout=logs[name].open("a"), stderr=subprocess.STDOUT
        )
        procs.append(proc)
        return proc

    try:
        start(
            "redis",
            [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        )
        python = sys.executable
        web = start("web", [python, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{web_port}", "-w", "2"])
        start(
            "worker",
            [python, "-m", "celery", "-A", "config", "worker", "-P", "prefork", "-c", "2", "-l", "info",
             "-n", f"obs-{worker_port}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        )  # fmt: skip
        base = f"http://127.0.0.1:{web_port}"
        _wait(lambda: _get(f"{base}/healthz")[0] == 200 or web.poll() is not None, 90, "gunicorn")
        assert web.poll() is None, logs["web"].read_text()[-3000:]
        healthz = (("method", "GET"), ("status", "2xx"), ("view", "healthz"))
        status, text = _get(f"{base}/metrics", METRICS_TOKEN)
        assert status == 200
        healthz_before = _samples(text)[("registry_http_request_duration_seconds_count", healthz)]
        for _ in range(30):
            assert _get(f"{base}/healthz")[0] == 200
        assert _get(f"{base}/metrics")[0] == 401  # the token is required

        from config.celery import app

        with app.connection_for_write(env["CELERY_BROKER_URL"]) as conn:
            for _ in range(4):
                deployment_tasks.expire_promotions.apply_async(connection=conn)
        task = deployment_tasks.expire_promotions.name
        success = (("outcome", "success"), ("task", task))

        def four_tasks():
            status, text = _get(f"{base}/metrics", METRICS_TOKEN)
            samples = _samples(text) if status == 200 else {}
            return samples if samples.get(("registry_celery_tasks_total", success)) == 4 else None

        samples = _wait(four_tasks, 60, f"4 {task} runs in /metrics; worker log: {logs['worker'].read_text()[-2000:]}")
        # every /healthz, whichever of the two gunicorn workers served it
        assert samples[("registry_http_request_duration_seconds_count", healthz)] - healthz_before == 30
        assert samples[("registry_celery_task_duration_seconds_count", success)] == 4
        assert samples[("registry_database_collector_up", ())] == 1
        # Which processes wrote: at least two gunicorn workers served /healthz, and worker children ran tasks.
        writers = {p.name for p in multiproc.iterdir()}
        assert len(writers) >= 3, writers

        status, text = _get(f"http://127.0.0.1:{worker_port}/metrics")
        assert status == 200
        worker_samples = _samples(text)
        assert worker_samples[("registry_celery_tasks_total", success)] == 4
        assert not any(name.startswith("registry_releases") for name, _ in worker_samples)  # DB counts: web only

        task_lines = [
            json.loads(line)
            for line in logs["worker"].read_text().splitlines()
            if line.startswith("{") and task in line and "succeeded" in line
        ]
        assert len(task_lines) == 4 and all(line["task_name"] == task and line["task_id"] for line in task_lines)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
