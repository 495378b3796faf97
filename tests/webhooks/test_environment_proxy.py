"""Deliveries go through the proxy the worker's environment names (HTTP_PROXY / HTTPS_PROXY), as docs/webhooks.md
says: egress proxies are how many networks let anything out. The egress rule then checks the address connected
to, the proxy's, and the proxy must keep webhooks out of the internal network."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from governance import webhooks
from governance.webhook_models import WebhookDelivery
from tests.webhooks.conftest import register

pytestmark = pytest.mark.django_db

PROXY_HOST = "127.0.0.2"  # loopback too, but not the receiver's address (127.0.0.1): the rule can tell them apart


@pytest.fixture
def proxy(monkeypatch):
    """A server that counts what is sent to it, named as the environment's proxy for every scheme."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
            pass

    server = ThreadingHTTPServer((PROXY_HOST, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://{PROXY_HOST}:{server.server_address[1]}"
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, url)
    yield seen
    server.shutdown()
    server.server_close()


def queue_one(world, receiver) -> int:
    created = (
        world["admin"]
        .client()
        .post("/api/v1/webhooks/", {"name": "ci", "url": receiver.url(), "event_types": ["*"]}, format="json")
    )
    assert created.status_code == 201, created.json()
    register(world["owner"].user, world["model"], "proxy")
    [delivery_id] = webhooks.dispatch().delivery_ids
    return delivery_id


def test_a_delivery_goes_through_the_proxy_the_environment_names(world, receiver, proxy):
    outcome = webhooks.deliver(delivery_id=queue_one(world, receiver))

    assert outcome.state == "delivered", outcome
    assert proxy == [receiver.url()] and receiver.to("/hook") == []  # the proxy was asked for the receiver's URL


def test_the_proxy_is_what_the_egress_rule_checks(world, receiver, proxy, settings):
    """With debug off and only the receiver's address allowed, the delivery is refused: the proxy's address is
    not allowed. Allowing the proxy's lets it through."""
    delivery_id = queue_one(world, receiver)  # saved while loopback is allowed (debug)
    settings.DEBUG = False
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]

    outcome = webhooks.deliver(delivery_id=delivery_id)

    assert outcome.state != "delivered" and proxy == [] and receiver.to("/hook") == []
    assert PROXY_HOST in outcome.error and "loopback" in outcome.error, outcome

    settings.WEBHOOK_ALLOWED_NETWORKS = [f"{PROXY_HOST}/32"]
    WebhookDelivery.objects.filter(pk=delivery_id).update(next_attempt_at=timezone.now())
    assert webhooks.deliver(delivery_id=delivery_id).state == "delivered"
    assert proxy == [receiver.url()]
