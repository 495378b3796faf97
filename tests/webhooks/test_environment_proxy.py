"""Deliveries connect to the receiver itself, never through a proxy named in the worker's environment
(HTTP_PROXY / HTTPS_PROXY): the egress rule checks the address a delivery connects to, which through a proxy is
the proxy's, so the receiver behind it (a service inside the network) would go unchecked."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from governance import webhooks
from tests.webhooks.conftest import register

pytestmark = pytest.mark.django_db


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

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, url)
    yield seen
    server.shutdown()
    server.server_close()


def test_a_delivery_goes_straight_to_the_receiver_whatever_proxy_the_environment_names(world, receiver, proxy):
    admin = world["admin"].client()
    assert (
        admin.post(
            "/api/v1/webhooks/", {"name": "ci", "url": receiver.url(), "event_types": ["*"]}, format="json"
        ).status_code
        == 201
    )
    register(world["owner"].user, world["model"], "proxy")
    [delivery_id] = webhooks.dispatch().delivery_ids

    outcome = webhooks.deliver(delivery_id=delivery_id)

    assert outcome.state == "delivered", outcome
    assert len(receiver.to("/hook")) == 1 and proxy == []
