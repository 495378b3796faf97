"""Review fixes: who may manage webhooks, URL validation, delete/update races, the stored error's size and
Retry-After as an HTTP date.

The race tests run on real PostgreSQL connections in threads: one transaction is held open (with its row locks)
while another runs into it, and the test waits until PostgreSQL reports the second blocked by the first before
letting the first commit.
"""

import email.utils
import math
import threading
import time

import pytest
from django.contrib.auth.models import Permission
from django.db import connection, transaction

from governance import webhooks
from governance.webhook_models import WebhookAttempt, WebhookCursor, WebhookDelivery, WebhookEndpoint
from tests.webhooks.conftest import register
from tests.webhooks.test_receiver_faults import RawReceiver

pytestmark = pytest.mark.django_db

URL = "/api/v1/webhooks/"


def create(client, **overrides):
    body = {"name": "ci", "url": "https://hooks.example.com/registry", "event_types": ["*"], **overrides}
    return client.post(URL, body, format="json")


def grant(user, *codenames):
    user.user_permissions.add(*(Permission.objects.get(codename=c) for c in codenames))


# --- 1. managing webhooks needs the audit permission too -----------------------------------------------


def test_manage_webhooks_alone_does_not_open_the_audit_log(world, receiver):
    owner = world["owner"]
    hook = create(world["admin"].client(), url=receiver.url()).json()["id"]
    register(owner.user, world["model"], "v1")
    webhooks.deliver(delivery_id=webhooks.dispatch().delivery_ids[0])
    grant(owner.user, "manage_webhooks")

    client = owner.client()
    refused = [
        create(client, name="feed"),
        client.get(URL),
        client.get(f"{URL}{hook}"),
        client.get(f"{URL}{hook}/deliveries"),
        client.patch(f"{URL}{hook}", {"description": "mine"}, format="json"),
        client.delete(f"{URL}{hook}"),
    ]
    assert [r.status_code for r in refused] == [403] * 6
    assert {r.json()["error"]["code"] for r in refused} == {"forbidden"}  # the shape any other refusal has
    assert "audit.view_auditevent" in refused[0].json()["error"]["message"]
    assert WebhookEndpoint.objects.count() == 1

    # The auditor's permission alone is not enough either; both together are.
    assert create(world["auditor"].client(), name="feed").status_code == 403
    grant(owner.user, "view_auditevent")
    assert create(client, name="feed").status_code == 201
    r = client.get(f"{URL}{hook}/deliveries")
    assert r.status_code == 200 and r.json()["results"][0]["payload"]["type"] == "version.registered"


# --- 2. URLs ------------------------------------------------------------------------------------------

BAD_URLS = {
    "unclosed ipv6": ("http://[::1/x", "malformed"),
    "not an address in brackets": ("http://[x]/", "malformed"),
    "unclosed ipv6 with zone": ("http://[fe80::1%25eth0/x", "malformed"),
    "port too big": ("http://h:99999/", "port"),
    "port zero": ("http://h:0/", "port"),
    "port not a number": ("http://h:abc/x", "port"),
    "signed port": ("http://h:+80/", "port"),
    "space in host": ("http://exa mple.com/", "whitespace"),
    "crlf injection": ("http://h/\r\nX-Injected: 1", "control"),
    "tab": ("http://h/a\tb", "whitespace"),
    "escape": ("http://h/\x1b[2J", "control"),
    "no-break space": ("http://h/a\u00a0b", "whitespace"),
    "no host": ("http://:80/x", "host"),
    "no host at all": ("http:///x", "host"),
}


@pytest.mark.parametrize("case", BAD_URLS, ids=list(BAD_URLS))
def test_a_malformed_url_is_refused_with_400_on_create_and_update(world, case):
    url, problem = BAD_URLS[case]
    admin = world["admin"].client()
    r = create(admin, url=url)
    assert r.status_code == 400, r.content
    assert problem in r.json()["error"]["message"]
    assert not WebhookEndpoint.objects.exists()

    hook = create(admin, name="good").json()["id"]
    r = admin.patch(f"{URL}{hook}", {"url": url}, format="json")
    assert r.status_code == 400, r.content
    assert problem in r.json()["error"]["message"]
    assert WebhookEndpoint.objects.get(pk=hook).url == "https://hooks.example.com/registry"


@pytest.mark.parametrize(
    "url", ["http://[::1]:8080/x", "https://h:65535/", "https://h:1/", "http://h:/x", "https://hooks.example.com"]
)
def test_well_formed_urls_are_still_accepted(world, url):
    assert create(world["admin"].client(), url=url).status_code == 201


# --- 3. races between a delete and everything else ----------------------------------------------------


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


class Holder(threading.Thread):
    """Runs `work` in a transaction on a connection of its own, and keeps it (and its locks) open until released."""

    def __init__(self, work):
        super().__init__(daemon=True)
        self.work, self.result, self.error, self.pid = work, None, None, None
        self.ready, self.release = threading.Event(), threading.Event()

    def run(self):
        try:
            with transaction.atomic():
                self.pid = backend_pid()
                self.result = self.work()
                self.ready.set()
                self.release.wait(30)
        except Exception as exc:
            self.error = exc
        finally:
            self.ready.set()
            connection.close()

    def start_and_wait(self) -> "Holder":
        self.start()
        assert self.ready.wait(30)
        assert self.error is None, self.error
        return self


class Worker(threading.Thread):
    def __init__(self, work):
        super().__init__(daemon=True)
        self.work, self.result, self.error = work, None, None

    def run(self):
        try:
            self.result = self.work()
        except Exception as exc:
            self.error = exc
        finally:
            connection.close()


def blocked_by(holder: Holder, worker: Worker, timeout: float = 15) -> bool:
    """Whether PostgreSQL reports a session waiting for the holder's locks (before the worker is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.is_alive():
        with connection.cursor() as cursor:  # autocommit: a fresh pg_stat_activity snapshot every time
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", [holder.pid])
            if cursor.fetchone()[0]:
                return True
        time.sleep(0.02)
    return False


def run_into(holder: Holder, work) -> Worker:
    """Start `work` while the holder's transaction is open; commit the holder once `work` waits for it."""
    worker = Worker(work)
    worker.start()
    waited = blocked_by(holder, worker)
    holder.release.set()
    holder.join(30)
    worker.join(30)
    assert not worker.is_alive() and not holder.is_alive()
    worker.waited = waited  # asserted by the tests after their outcome, which says more when it is wrong
    return worker


def deleting(admin, pk: int) -> Holder:
    return Holder(lambda: webhooks.endpoint_delete(actor=admin, endpoint=WebhookEndpoint.objects.get(pk=pk)))


def attempted(world, receiver):
    """An endpoint at the receiver and a delivery to it, claimed and POSTed (deliver() up to recording the
    attempt, with its transactions as they are: the claim commits on its own). (endpoint, claimed, result)."""
    endpoint, _ = webhooks.endpoint_create(
        actor=world["admin"].user, name="hook", url=receiver.url(), event_types=["*"]
    )
    register(world["owner"].user, world["model"], "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids
    claimed = webhooks._claim(delivery_id)
    result = webhooks._attempt(claimed, claimed.endpoint)
    assert result.status == 200 and len(receiver.to("/hook")) == 1
    return endpoint, claimed, result


needs_postgres = pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks across connections")


@needs_postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method", ["patch", "delete"])
def test_a_change_to_an_endpoint_deleted_meanwhile_answers_404(world, method):
    admin = world["admin"]
    endpoint, _ = webhooks.endpoint_create(actor=admin.user, name="hook", url="https://h.example/x", event_types=["*"])
    holder = deleting(admin.user, endpoint.pk).start_and_wait()
    client = admin.client()
    # The view reads the endpoint (still there for it), then the service's locked read waits for the delete.
    request = getattr(client, method)
    worker = run_into(holder, lambda: request(f"{URL}{endpoint.pk}", {"description": "x"}, format="json"))
    assert holder.error is None
    assert worker.error is None, repr(worker.error)  # was WebhookEndpoint.DoesNotExist: a 500
    assert worker.result.status_code == 404
    assert worker.result.json()["error"]["code"] == "not_found"
    assert worker.waited, "the second transaction did not wait for the first"


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_delete_waits_for_an_attempt_being_recorded_and_removes_it_too(world, receiver):
    admin = world["admin"]
    # A real attempt against the real receiver, then recording it in a transaction kept open once the attempt
    # row is written.
    endpoint, claimed, result = attempted(world, receiver)
    holder = Holder(lambda: webhooks._finish(claimed, claimed.endpoint, result, claimed.created_at, 5))
    holder.start_and_wait()
    assert holder.result.state == "delivered"

    worker = run_into(holder, lambda: admin.client().delete(f"{URL}{endpoint.pk}"))
    assert holder.error is None
    assert worker.error is None, repr(worker.error)  # was an IntegrityError (the new attempt row): a 500
    assert worker.result.status_code == 204
    assert not WebhookEndpoint.objects.exists()
    assert not WebhookDelivery.objects.exists() and not WebhookAttempt.objects.exists()
    assert worker.waited, "the second transaction did not wait for the first"


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_an_attempt_finishing_after_a_delete_finds_its_delivery_gone(world, receiver):
    admin = world["admin"]
    endpoint, claimed, result = attempted(world, receiver)  # the POST, before the delete
    holder = deleting(admin.user, endpoint.pk).start_and_wait()
    worker = run_into(holder, lambda: webhooks._finish(claimed, claimed.endpoint, result, claimed.created_at, 5))
    assert holder.error is None and worker.error is None, (holder.error, worker.error)
    assert worker.result is None  # nothing to record: the delivery went with its endpoint
    assert not WebhookDelivery.objects.exists() and not WebhookAttempt.objects.exists()
    assert webhooks.deliver(delivery_id=claimed.pk) is None  # a late duplicate task has nothing to do
    assert worker.waited, "the second transaction did not wait for the first"


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_delete_waits_for_a_dispatch_fanning_out_to_the_endpoint(world):
    admin = world["admin"]
    endpoint, _ = webhooks.endpoint_create(actor=admin.user, name="hook", url="https://h.example/x", event_types=["*"])
    register(world["owner"].user, world["model"], "v1")
    holder = Holder(lambda: webhooks.dispatch()).start_and_wait()
    assert len(holder.result.delivery_ids) == 1

    worker = run_into(holder, lambda: admin.client().delete(f"{URL}{endpoint.pk}"))
    assert holder.error is None, repr(holder.error)  # was an IntegrityError when the dispatch committed
    assert worker.error is None, repr(worker.error)
    assert worker.result.status_code == 204
    assert not WebhookDelivery.objects.exists()
    assert worker.waited, "the second transaction did not wait for the first"


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_dispatch_after_a_delete_skips_the_deleted_endpoint(world):
    admin = world["admin"]
    doomed, _ = webhooks.endpoint_create(actor=admin.user, name="doomed", url="https://h.example/x", event_types=["*"])
    kept, _ = webhooks.endpoint_create(actor=admin.user, name="kept", url="https://h.example/y", event_types=["*"])
    register(world["owner"].user, world["model"], "v1")
    webhooks.dispatch(batch_size=1)  # creates the cursor; the creation events are not webhook events
    holder = deleting(admin.user, doomed.pk).start_and_wait()

    worker = run_into(holder, lambda: webhooks.dispatch())
    assert holder.error is None
    assert worker.error is None, repr(worker.error)  # was an IntegrityError at the dispatch's commit
    assert [d.endpoint_id for d in WebhookDelivery.objects.all()] == [kept.pk]
    assert WebhookCursor.objects.get().last_seq == worker.result.last_seq
    assert worker.waited, "the second transaction did not wait for the first"


# --- 4. the receiver's error text is stored cut ------------------------------------------------------


def test_a_huge_reason_phrase_is_stored_cut_to_1000_characters(world, settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.01
    raw = RawReceiver([b"HTTP/1.1 503 " + b"x" * 60_000 + b"\r\nContent-Length: 2\r\n\r\nno"])
    try:
        admin = world["admin"]
        hook = create(admin.client(), url=raw.url()).json()["id"]
        register(world["owner"].user, world["model"], "v1")
        outcome = webhooks.deliver(delivery_id=webhooks.dispatch().delivery_ids[0])
    finally:
        raw.close()
    assert outcome.status == 503 and outcome.error.startswith("HTTP 503 xxx")
    assert len(outcome.error) == 1000
    delivery = WebhookDelivery.objects.get()
    assert len(delivery.last_error) == 1000
    assert [len(a.error) for a in delivery.attempt_log.all()] == [1000]
    [item] = admin.client().get(f"{URL}{hook}/deliveries").json()["results"]
    assert len(item["last_error"]) == len(item["attempt_log"][0]["error"]) == 1000


# --- 5. Retry-After ----------------------------------------------------------------------------------


def test_retry_after_as_an_http_date_is_honoured(world, settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.01
    settings.WEBHOOK_RETRY_MAX_SECONDS = 3600
    when = email.utils.formatdate(time.time() + 120, usegmt=True)  # "Wed, 21 Oct 2026 07:28:00 GMT"
    raw = RawReceiver(
        [f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: {when}\r\nContent-Length: 2\r\n\r\nno".encode()]
    )
    try:
        webhooks.endpoint_create(actor=world["admin"].user, name="hook", url=raw.url(), event_types=["*"])
        register(world["owner"].user, world["model"], "v1")
        outcome = webhooks.deliver(delivery_id=webhooks.dispatch().delivery_ids[0])
    finally:
        raw.close()
    assert (outcome.state, outcome.status) == ("pending", 503)
    assert 110 <= outcome.retry_in <= 121  # was the 0.01 s backoff: the date was ignored


def retry_after(value):
    return webhooks._retry_after({"Retry-After": value})


@pytest.mark.parametrize(
    "value", ["1_000", "nan", "inf", "-inf", "-5", "1e3", "0x10", "12.5", "", "  ", "soon", "0", "٣"]
)
def test_retry_after_ignores_what_is_neither_digits_nor_an_http_date(value):
    assert retry_after(value) is None


def test_retry_after_reads_seconds_and_dates(settings):
    settings.WEBHOOK_RETRY_MAX_SECONDS = 3600
    assert retry_after("120") == 120
    assert retry_after(" 120 ") == 120
    future = retry_after(email.utils.formatdate(time.time() + 600, usegmt=True))
    assert 590 <= future <= 601
    assert 590 <= retry_after(email.utils.formatdate(time.time() + 600)) <= 601  # "-0000" instead of "GMT"
    assert retry_after(email.utils.formatdate(time.time() - 600, usegmt=True)) is None  # in the past
    assert retry_after("Wed, 32 Oct 2015 07:28:00 GMT") is None
    huge = retry_after("9" * 400)
    assert math.isfinite(huge)
    assert webhooks.retry_delay(1, huge) == 3600  # the cap still applies
    assert webhooks._retry_after(None) is None and webhooks._retry_after({}) is None
