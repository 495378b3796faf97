"""Prometheus metrics: what each process measures, what the database says at scrape time, and /metrics.

Two kinds of metric (docs/operations.md, "Metrics"):

- Measured in the process that does the work: HTTP request latency (by view name, never by raw
  path) and Celery task outcomes and durations. With PROMETHEUS_MULTIPROC_DIR set in the environment
  *before the process starts*, prometheus_client writes them to files in that directory, so a scrape
  of any one gunicorn worker sums all workers (and, on the same machine, Celery prefork children).
- Counted from the database at scrape time (`DatabaseCollector`): releases by state, reconcile drift
  events, webhook deliveries and failed attempts. The database is shared by every process, so these
  are right however many processes there are, and are never double counted.
"""

import hmac
import logging
import os
import time

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, disable_created_metrics, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
disable_created_metrics()  # no *_created series: they double the output and nothing here uses them

# Request latency: most API calls take milliseconds, exports and reconciles can take seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

HTTP_LATENCY = Histogram(
    "registry_http_request_duration_seconds",
    "Time from the first middleware until the response (a streamed one: its whole body) was sent, by URL name (view), "
    "method and status class.",
    ["view", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
TASKS = Counter(
    "registry_celery_tasks",
    "Celery task runs that ended, by task name and outcome (success, failure, retry, ...).",
    ["task", "outcome"],
)
TASK_DURATION = Histogram(
    "registry_celery_task_duration_seconds",
    "Run time of Celery tasks (each attempt), by task name and outcome.",
    ["task", "outcome"],
    buckets=TASK_BUCKETS,
)

DRIFT_ACTION = "target.drift_detected"  # written by governance.deployment.reconcile
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def view_label(request: HttpRequest) -> str:
    """The URL pattern's name (or its route when unnamed); "<unmatched>" when no pattern matched
    (404s, and static files served by WhiteNoise before URL resolution). Never the raw path, whose
    ids and typos would make the label set unbounded."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "<unmatched>"
    return match.view_name or match.route or "<unnamed>"


_observe_failed = False


def observe_request(request: HttpRequest, status: int, seconds: float) -> None:
    """Never raises: a metric that cannot be written (PROMETHEUS_MULTIPROC_DIR removed or full, say) must not
    turn a response into a 500, least of all after its write has committed. Logged once per process, not
    on every request."""
    global _observe_failed
    method = request.method if request.method in _METHODS else "other"
    try:
        HTTP_LATENCY.labels(view_label(request), method, f"{status // 100}xx").observe(seconds)
    except Exception:
        if not _observe_failed:
            _observe_failed = True
            log.exception("metrics: could not record a request's latency; further failures are not logged")


# --- Celery (connected in config/celery.py) ------------------------------------------------------

_task_started: dict[str, float] = {}


def task_started(task_id: str | None) -> None:
    if task_id:
        _task_started[task_id] = time.perf_counter()


def task_finished(task_name: str, task_id: str | None, state: str | None) -> None:
    started = _task_started.pop(task_id, None) if task_id else None
    outcome = (state or "unknown").lower()
    TASKS.labels(task_name, outcome).inc()
    if started is not None:
        TASK_DURATION.labels(task_name, outcome).observe(time.perf_counter() - started)


# --- Counted from the database at scrape time ----------------------------------------------------


class DatabaseCollector:
    """Gauges and counters read from the database on each scrape (a handful of indexed COUNTs)."""

    def describe(self):
        return []  # no collect() at registration time: that would query the database on import

    def collect(self):
        up = GaugeMetricFamily(
            "registry_database_collector_up", "1 if the database counts below could be read at this scrape, else 0."
        )
        try:
            families = list(self._families())
        except DatabaseError:
            log.exception("metrics: could not read the database counts")
            families = []
        up.add_metric([], 1 if families else 0)
        yield up
        yield from families

    def _families(self):
        from audit.models import AuditEvent
        from governance.choices import ReleaseState
        from governance.models import Release
        from governance.webhook_models import DeliveryState, WebhookAttempt, WebhookDelivery

        releases = GaugeMetricFamily(
            "registry_releases", "Releases (governance.Release rows) by state.", labels=["state"]
        )
        counts = dict(Release.objects.values_list("state").annotate(n=Count("pk")).values_list("state", "n"))
        for state in ReleaseState.values:
            releases.add_metric([state], counts.pop(state, 0))
        for state, n in counts.items():  # a state no longer in the choices: still shown, never hidden
            releases.add_metric([state], n)
        yield releases

        drift = CounterMetricFamily(
            "registry_reconcile_drift",
            f"Times the reconciler found a host serving something else than the live release "
            f"(audit events {DRIFT_ACTION}).",
        )
        drift.add_metric([], AuditEvent.objects.filter(action=DRIFT_ACTION).count())
        yield drift

        deliveries = GaugeMetricFamily(
            "registry_webhook_deliveries", "Outgoing webhook deliveries by state.", labels=["state"]
        )
        counts = dict(WebhookDelivery.objects.values_list("state").annotate(n=Count("pk")).values_list("state", "n"))
        for state in DeliveryState.values:
            deliveries.add_metric([state], counts.pop(state, 0))
        for state, n in counts.items():
            deliveries.add_metric([state], n)
        yield deliveries

        failed = Q(status_code__isnull=True) | Q(status_code__lt=200) | Q(status_code__gte=300)
        failures = CounterMetricFamily(
            "registry_webhook_delivery_failures",
            "Failed webhook delivery attempts (no answer, or a non-2xx status). Drops only when an "
            "endpoint and its delivery log are deleted, which Prometheus reads as a counter reset.",
        )
        failures.add_metric([], WebhookAttempt.objects.filter(failed).count())
        yield failures


class _ProcessMetrics:
    """This process's own metrics (the default registry: ours plus process/platform/gc collectors)."""

    def describe(self):
        return []

    def collect(self):
        yield from REGISTRY.collect()


def scrape_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if MULTIPROCESS:
        multiprocess.MultiProcessCollector(registry)  # every process writing to the directory
    else:
        registry.register(_ProcessMetrics())
    registry.register(DatabaseCollector())
    return registry


def worker_registry() -> CollectorRegistry:
    """What a Celery worker's own exporter serves: the tasks of all its children, no database counts
    (those come from the web's /metrics, once)."""
    registry = CollectorRegistry(auto_describe=False)
    if MULTIPROCESS:
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ProcessMetrics())
    return registry


_scrape = None


def _authorized(request: HttpRequest) -> bool:
    """METRICS_TOKEN set: `Authorization: Bearer <METRICS_TOKEN>` is required. Unset: open only in
    DEBUG; a production deployment without a token answers 403 rather than exposing its figures."""
    token = settings.METRICS_TOKEN
    if not token:
        return settings.DEBUG
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def metrics_view(request: HttpRequest) -> HttpResponse:
    global _scrape
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    if not _authorized(request):
        if settings.METRICS_TOKEN:
            return HttpResponse(
                "metrics: a valid bearer token is required\n",
                status=401,
                content_type="text/plain",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return HttpResponse("metrics: set METRICS_TOKEN to enable /metrics\n", status=403, content_type="text/plain")
    if _scrape is None:
        _scrape = scrape_registry()
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(_scrape), content_type=content_type)
