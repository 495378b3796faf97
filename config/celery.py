import contextlib
import logging
import os
import time

from celery import Celery, signals
from celery import Task as CeleryTask
from celery.exceptions import Ignore, Reject

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("registry", task_cls="config.celery:Task")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

log = logging.getLogger(__name__)


# --- Refuse to start where the web would (core.checks) ------------------------------------------------
# Celery runs Django's system checks at worker start and discards what they find: with debug off and no DATABASE_URL
# a worker consumed real tasks against an empty SQLite file. A worker or beat now stops at start with the check's
# message, as `manage.py check` and the web do. (Celery logs and swallows a receiver's exception: hence SystemExit.)
@signals.worker_init.connect
@signals.beat_init.connect
def _refuse_embedded_backends(sender=None, **_):
    from core import checks

    errors = checks.embedded_backends()
    if errors:
        log.critical("refusing to start: %s", checks.refusal(errors))
        raise SystemExit(1)


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
    _request_id_tokens[task_id] = (context.request_id.set(given), context.task.set((task.name, task_id)))


@signals.task_postrun.connect
def _restore_request_id(task_id=None, **_):
    from core import context

    tokens = _request_id_tokens.pop(task_id, None)
    if tokens is not None:
        context.task.reset(tokens[1])
        context.request_id.reset(tokens[0])


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


@signals.task_failure.connect
def _task_ended_by_the_worker(sender=None, task_id=None, exception=None, **_):
    """A run the worker's main process ended: the hard time limit killed its child, or the child died and its message
    is not run again. No task_postrun comes from the dead child, so without this such a run was in no outcome (the
    documented failure alert could not see a reconcile killed at its hard limit). A failure inside the child is
    counted by its postrun: not here."""
    from billiard.exceptions import TimeLimitExceeded, WorkerLostError

    from core import metrics

    if isinstance(exception, TimeLimitExceeded | WorkerLostError) and task_id not in _ended_by_the_worker:
        _ended_by_the_worker[task_id] = None  # Celery sends it twice for a hard limit (on_timeout, then on_failure)
        while len(_ended_by_the_worker) > 1000:
            _ended_by_the_worker.pop(next(iter(_ended_by_the_worker)))
        outcome = "time_limit" if isinstance(exception, TimeLimitExceeded) else "lost"
        metrics.task_finished(getattr(sender, "name", "unknown"), task_id, outcome)


_ended_by_the_worker: dict[str, None] = {}  # the task ids counted there lately, oldest first


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


# --- One clock and one count for every process: the broker's Redis -------------------------------
# Beat, web and workers may run on machines whose clocks disagree, and a worker child that dies takes what it
# knew with it: the Redis server the broker runs on is what they all share. Its client comes from Celery's own
# broker connection, so it is configured as the broker is (a TLS URL's options as kombu reads them,
# broker_use_ssl, broker_transport_options: timeouts, sentinel, global_keyprefix): a redis-py client built from
# the URL alone refused `ssl_cert_reqs=CERT_REQUIRED` and left the count and the clock out. One per process,
# made on first use, so a prefork child never uses its parent's.
_broker_redis: tuple[int, object, object, str] | None = None  # pid, kombu connection, redis client, key prefix


def _broker():
    global _broker_redis
    if _broker_redis is None or _broker_redis[0] != os.getpid():
        import redis
        from kombu.exceptions import KombuError

        connection = app.connection_for_write()
        if connection.transport.driver_type != "redis":
            _broker_redis = (os.getpid(), None, None, "")
        else:
            try:  # once: the next call tries again
                channel = connection.ensure_connection(max_retries=0).default_channel
            except KombuError as exc:
                connection.release()
                raise redis.ConnectionError(f"could not connect to the broker: {exc}") from exc
            # A plain client on the channel's pool (the connection its ping opened): kombu's prefixing client
            # prefixes only the commands kombu sends (DEL, not INCR), so the keys here carry the prefix themselves.
            client = redis.Redis(connection_pool=channel.client.connection_pool)
            _broker_redis = (os.getpid(), connection, client, channel.global_keyprefix or "")
    return _broker_redis


def broker_redis():
    """This process's client of the broker's Redis server, or None when the broker is not Redis. Raises
    redis.ConnectionError when it cannot connect."""
    return _broker()[2]


def broker_key(name: str) -> str:
    """`name` under the broker's global_keyprefix, if it has one."""
    return _broker()[3] + name


def shared_now() -> float | None:
    """Seconds since the epoch by the one clock every process reads alike: the Redis server's, or this machine's
    with the filesystem broker (which works only with every process on one machine). None otherwise."""
    import redis

    if app.conf.broker_url == "filesystem://":
        return time.time()
    try:
        client = broker_redis()
        if client is None:
            return None
        seconds, micros = client.time()
    except redis.RedisError as exc:
        log.warning("could not read the broker's clock: %s", exc)
        return None
    return seconds + micros / 1_000_000


# --- Stale runs: a message may carry the most seconds it may wait in the queue ----------------------
# Celery's own `expires` is a time of day by the publisher's clock that the worker compares with its own: a
# worker whose clock ran more than the allowance ahead of beat's dropped every periodic run. Here the publisher
# stamps the message with the shared clock and the worker reads that same clock. A retry is never stale (the
# stamp of its first run would count its countdown as waiting); nor is a message no shared clock could stamp.
MAX_AGE_HEADER = "registry_max_age"
SENT_AT_HEADER = "registry_sent_at"


@signals.before_task_publish.connect
def _stamp_sent_at(headers=None, **_):
    if not headers or headers.get(MAX_AGE_HEADER) is None:
        return
    headers.pop(SENT_AT_HEADER, None)
    if headers.get("retries"):
        return
    now = shared_now()
    if now is not None:
        headers[SENT_AT_HEADER] = now


def _waited(request) -> float | None:
    """How long this run waited in the queue when that is longer than its max age; None when it may run."""
    max_age, sent_at = getattr(request, MAX_AGE_HEADER, None), getattr(request, SENT_AT_HEADER, None)
    if max_age is None or sent_at is None:
        return None
    now = shared_now()
    if now is None or now - sent_at <= max_age:
        return None
    return now - sent_at


# --- Poison messages: a task that kills its worker process is not run for ever --------------------
# Messages are acknowledged late and re-queued when the process running them dies (task_reject_on_worker_lost),
# so a task that crashes its process (a segfault, the OOM killer, os._exit) came back for good. Each start is
# counted in Redis under the task id and retry number, before the task runs (the count must outlive the
# process); a run that ends, however it ends, deletes its count. A message started TASK_MAX_DELIVERIES times
# without ending is rejected unrun. Nothing is lost by that: the database is the truth, and the periodic
# reconcile and the webhook sweeper pick up what the task was for.
DELIVERY_COUNT_TTL = 86_400  # longer than any wait before a redelivery (the broker's visibility timeout)
_delivery_keys: dict[str, str] = {}  # task id -> its count's key, deleted when the run ends


def _count_delivery(request) -> int | None:
    import redis

    if request.is_eager or not request.delivery_info:
        return None
    try:
        client = broker_redis()
        if client is None:
            return None
        key = broker_key(f"registry:deliveries:{request.id}:{request.retries}")
        deliveries, _ = client.pipeline().incr(key).expire(key, DELIVERY_COUNT_TTL).execute()
    except redis.RedisError as exc:
        log.warning("could not count the deliveries of task %s: %s", request.id, exc)
        return None
    _delivery_keys[request.id] = key
    return deliveries


@signals.task_postrun.connect
def _forget_delivery(task_id=None, **_):
    import redis

    key = _delivery_keys.pop(task_id, None)
    if key is not None:
        with contextlib.suppress(redis.RedisError):  # the count expires on its own
            broker_redis().delete(key)


class Task(CeleryTask):
    """The base of every task here (`task_cls`): drops stale runs and poison messages before they start."""

    def before_start(self, task_id, args, kwargs):
        from django.conf import settings

        waited = _waited(self.request)
        if waited is not None:
            log.info(
                "skipping %s[%s]: it waited %.1f s in the queue, more than its %s s; a later run covers it",
                self.name,
                task_id,
                waited,
                getattr(self.request, MAX_AGE_HEADER),
            )
            raise Ignore()
        deliveries = _count_delivery(self.request)
        limit = settings.TASK_MAX_DELIVERIES
        if deliveries is not None and deliveries > limit:
            log.error(
                "giving up on %s[%s]: its %s runs so far never ended (its worker process died each time: a crash, "
                "the OOM killer?); rejected unrun (TASK_MAX_DELIVERIES=%s)",
                self.name,
                task_id,
                deliveries - 1,
                limit,
            )
            raise Reject(f"{deliveries - 1} runs never ended", requeue=False)
