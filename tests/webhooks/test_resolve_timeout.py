"""A name whose lookup stalls: the resolver is asked, never answers, and the attempt ends at its deadline as a failed,
retried attempt that says so. Before, getaddrinfo held the attempt for as long as resolv.conf's retries lasted (no
socket timeout bounds it and no signal interrupts it, so not even the task's soft limit did).

Real name resolution: the delivery runs in a process of its own, in a mount namespace where /etc/resolv.conf names a
DNS server on a loopback address of this test's that takes the queries and answers none (the machine's own
resolv.conf is untouched)."""

import contextlib
import json
import random
import re
import socket
import subprocess
import sys
import threading

import pytest

from governance import webhooks
from governance.webhook_models import DeliveryState, WebhookAttempt
from registry import services as registry_services
from tests import processes
from tests.webhooks.conftest import register

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HOST = "hooks.stall.test"
TIMEOUT = 2  # WEBHOOK_TIMEOUT_SECONDS
DELIVER = """
import io, json, sys, time
import django
django.setup()
from django.core.management import call_command
from governance import webhooks
started = time.monotonic()
outcome = webhooks.deliver(delivery_id=int(sys.argv[1]))
took = time.monotonic() - started
started = time.monotonic()
out, err = io.StringIO(), io.StringIO()
call_command("webhook_egress_check", stdout=out, stderr=err)
print(json.dumps({"state": outcome.state, "error": outcome.error, "retry_in": outcome.retry_in, "took": took,
                  "check": err.getvalue(), "check_took": time.monotonic() - started}))
"""


@pytest.fixture
def silent_dns():
    """A DNS server on 127.53.x.y:53 that reads every query and answers none. Yields its address and the queries."""
    address = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"  # noqa: S311 - not cryptography
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((address, 53))
    server.settimeout(0.2)
    queries: list[bytes] = []
    stop = threading.Event()

    def read():
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                queries.append(server.recv(512))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    yield address, queries
    stop.set()
    thread.join()
    server.close()


def test_a_lookup_that_stalls_ends_at_the_attempt_deadline_and_is_retried(silent_dns, tmp_path, django_user_model):
    processes.require_postgresql()
    nameserver, queries = silent_dns
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(f"nameserver {nameserver}\noptions timeout:30 attempts:1\n")  # one stall: 30 s
    admin = django_user_model.objects.create_superuser(username="root", password="pw-root-123456")
    model = registry_services.model_create(actor=admin, namespace="acme", name="churn")
    endpoint, _ = webhooks.endpoint_create(
        actor=admin, name="stalls", url=f"http://{HOST}:8123/hook", event_types=["version.registered"]
    )
    register(admin, model, "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids

    env = processes.service_env("redis://127.0.0.1:1/0", WEBHOOK_TIMEOUT_SECONDS=str(TIMEOUT))
    command = [
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv_conf),
        sys.executable, "-c", DELIVER, str(delivery_id),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=processes.BASE_DIR, env=env, capture_output=True, text=True, timeout=180)  # noqa: S603
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    # The attempt waits what is left of its deadline (WEBHOOK_TIMEOUT_SECONDS, the connection's set-up before the
    # lookup included), so the wait it names can be a few milliseconds short of TIMEOUT on a loaded machine.
    waited = re.fullmatch(rf"timed out resolving {re.escape(HOST)}: no answer within ([0-9.]+)s", result["error"])
    assert waited and TIMEOUT - 0.5 < float(waited[1]) <= TIMEOUT, result["error"]
    reason = result["error"]
    check_reason = f"timed out resolving {HOST}: no answer within {TIMEOUT}s"  # the egress check waits it all
    assert any(b"\x05hooks\x05stall\x04test" in query for query in queries)  # the resolver was asked
    assert result["took"] < TIMEOUT + 8, result  # the stall lasts 30 s; margin for a loaded machine
    assert result["state"] == DeliveryState.PENDING and result["retry_in"] > 0  # a failed attempt, retried
    assert WebhookAttempt.objects.get(delivery_id=delivery_id).error == reason
    # The egress check resolves the same way: a stalled name is reported as not checked, in the same time.
    assert result["check"].strip().endswith(f"not checked: cannot resolve its host ({check_reason})"), result["check"]
    assert result["check"].startswith(f"webhook {endpoint.pk} 'stalls' ")
    assert result["check_took"] < TIMEOUT + 8, result
