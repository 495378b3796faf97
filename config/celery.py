import logging
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("registry")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

log = logging.getLogger(__name__)


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
