import logging
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("registry")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

log = logging.getLogger(__name__)


# --- Request id: a task carries the id of the request that queued it ------------------------------
# So the audit events and log lines a worker writes for an approval or a rollback name the same request
# as the API call's own (core.context; docs/operations.md). Beat's tasks carry none.
REQUEST_ID_HEADER = "registry_request_id"


@signals.before_task_publish.connect
def _send_request_id(headers=None, **_):
    from core import context

    rid = context.request_id.get()
    if rid and headers is not None and REQUEST_ID_HEADER not in headers:
        headers[REQUEST_ID_HEADER] = rid


_request_id_tokens: dict[str, object] = {}  # task id -> the context token to restore after the task


@signals.task_prerun.connect
def _take_request_id(task_id=None, task=None, **_):
    from core import context

    # An eagerly run task has no header: it keeps its caller's request id.
    given = getattr(task.request, REQUEST_ID_HEADER, None) or context.request_id.get()
    _request_id_tokens[task_id] = context.request_id.set(given)


@signals.task_postrun.connect
def _restore_request_id(task_id=None, **_):
    from core import context

    token = _request_id_tokens.pop(task_id, None)
    if token is not None:
        context.request_id.reset(token)


# --- Metrics: task outcomes and durations (core.metrics; docs/operations.md) ------------------------
# Sent in the process that runs the task (a prefork child, or the caller when tasks run eagerly).


@signals.task_prerun.connect
def _task_prerun(task_id=None, **_):
    from core import metrics

    metrics.task_started(task_id)


@signals.task_postrun.connect
def _task_postrun(task_id=None, task=None, state=None, **_):
    from core import metrics

    metrics.task_finished(getattr(task, "name", "unknown"), task_id, state)


@signals.worker_ready.connect
def _serve_worker_metrics(**_):
    """WORKER_METRICS_PORT set: the worker's main process serves its children's task metrics over HTTP."""
    from django.conf import settings
    from prometheus_client import start_http_server

    from core import metrics

    port = settings.WORKER_METRICS_PORT
    if not port:
        return
    if not metrics.MULTIPROCESS:
        log.warning("WORKER_METRICS_PORT is set without PROMETHEUS_MULTIPROC_DIR: prefork children's metrics are lost")
    addr = os.environ.get("WORKER_METRICS_ADDR", "0.0.0.0")  # noqa: S104 - scraped from outside the container
    start_http_server(port, addr=addr, registry=metrics.worker_registry())
    log.info("worker metrics on port %s", port)
