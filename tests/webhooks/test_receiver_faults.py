"""Receivers that misbehave: non-HTTP replies, unstorable bytes, trickling answers; and key rotation.

Every attempt must be counted and end as a recorded attempt (so WEBHOOK_MAX_ATTEMPTS applies), and no
attempt may outlive WEBHOOK_TIMEOUT_SECONDS (so it never outlives its lease). The receivers are real
sockets on localhost: a raw TCP server for replies that are not (or not quite) HTTP, and the HTTP
receiver of conftest.py for the rest.
"""

import logging
import runpy
import socket
import threading
import time
from pathlib import Path

import pytest
from django.utils import timezone
from standardwebhooks import Webhook

from governance import webhooks
from governance.webhook_models import DeliveryState, WebhookDelivery, WebhookEndpoint
from tests.webhooks.conftest import register

pytestmark = pytest.mark.django_db


class RawReceiver:
    """Reads each HTTP request in full, then plays `reply`: a list of byte strings and pauses (floats)."""

    def __init__(self, reply: list):
        self.reply = reply
        self.hits: list[float] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self) -> str:
        host, port = self.server.getsockname()[:2]
        return f"http://{host}:{port}/hook"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(body) < length:
                    body += conn.recv(65536)
                self.hits.append(time.monotonic())
                for part in self.reply:
                    if isinstance(part, float):
                        time.sleep(part)
                    else:
                        conn.sendall(part)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # let the client read everything before the close
            except OSError:  # the client gave up (as it should, for a trickle)
                pass

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def raw_receiver():
    made = []

    def make(reply: list) -> RawReceiver:
        made.append(RawReceiver(reply))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def one_delivery(world, url: str) -> int:
    webhooks.endpoint_create(actor=world["admin"].user, name="hook", url=url, event_types=["*"])
    register(world["owner"].user, world["model"], "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids
    return delivery_id


def wait_until_due(delivery_id: int) -> None:
    due = WebhookDelivery.objects.get(pk=delivery_id).next_attempt_at
    time.sleep(max(0.0, (due - timezone.now()).total_seconds()) + 0.01)


HEADERS = b"Content-Type: text/plain\r\nContent-Length: 2\r\n"
NOT_HTTP = {
    "ssh banner": ([b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"], "BadStatusLine"),
    "tls alert": ([b"\x15\x03\x01\x00\x02\x02\x50"], "BadStatusLine"),
    "overlong status line": ([b"HTTP/1.1 200 " + b"O" * 70_000 + b"\r\n\r\nok"], "LineTooLong"),
    "overlong header": ([b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n" + HEADERS + b"\r\nok"], "LineTooLong"),
    "too many headers": (
        [b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + HEADERS + b"\r\nok"],
        "HTTPException",
    ),
}


@pytest.mark.parametrize("case", NOT_HTTP, ids=list(NOT_HTTP))
def test_a_reply_that_is_not_http_is_a_counted_failed_attempt(world, raw_receiver, settings, case):
    settings.WEBHOOK_MAX_ATTEMPTS = 2
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.05
    reply, error = NOT_HTTP[case]
    receiver = raw_receiver(reply)
    delivery_id = one_delivery(world, receiver.url())

    first = webhooks.deliver(delivery_id=delivery_id)  # did not raise
    assert (first.state, first.attempt, first.status) == ("pending", 1, None)
    assert error in first.error and 0 < first.retry_in <= 0.05  # retried on the backoff, not after the lease
    wait_until_due(delivery_id)
    second = webhooks.deliver(delivery_id=delivery_id)
    assert (second.state, second.attempt, second.retry_in) == ("failed", 2, None)

    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 2, None)
    assert [(a.number, a.status_code) for a in delivery.attempt_log.all()] == [(1, None), (2, None)]
    assert all(error in a.error for a in delivery.attempt_log.all())
    assert len(receiver.hits) == 2
    assert webhooks.due_deliveries(grace_seconds=0) == []  # the sweeper has nothing left to re-queue


def test_nul_bytes_in_the_answer_are_stored_escaped(world, raw_receiver, settings):
    body = b"O\x00K\x00"  # a UTF-16 "OK"
    refused = b"no\x00pe"
    receiver = raw_receiver([b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + body])
    delivery_id = one_delivery(world, receiver.url())
    outcome = webhooks.deliver(delivery_id=delivery_id)
    assert (outcome.state, outcome.status, outcome.attempt) == ("delivered", 200, 1)
    [attempt] = WebhookDelivery.objects.get(pk=delivery_id).attempt_log.all()
    assert attempt.response_excerpt == "O\\u0000K\\u0000"

    # A refusal whose reason phrase and body hold NUL: counted and logged too.
    receiver.reply = [b"HTTP/1.1 503 Busy\x00Now\r\nContent-Length: 6\r\n\r\n" + refused]
    register(world["owner"].user, world["model"], "v2")
    [second_id] = webhooks.dispatch().delivery_ids
    outcome = webhooks.deliver(delivery_id=second_id)
    assert (outcome.state, outcome.status, outcome.attempt) == ("pending", 503, 1)
    delivery = WebhookDelivery.objects.get(pk=second_id)
    [attempt] = delivery.attempt_log.all()
    assert attempt.error == delivery.last_error == "HTTP 503 Busy\\u0000Now"
    assert attempt.response_excerpt == "no\\u0000pe"


TRICKLES = {
    # One byte every 0.25 s: each read is well within the timeout, the answer as a whole is not.
    "status line": ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], None),
    "headers": ([b"HTTP/1.1 200 OK\r\n"], b"X-Slow: " + b"z" * 30 + b"\r\nContent-Length: 2\r\n\r\nok"),
    "body": ([b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n"], b"y" * 30),
    # Headers complete after 0.7 s, then nothing: one read of the body would wait a whole timeout more.
    "stalled body": ([b"HTTP/1.1 200 OK\r\n", 0.7, b"Content-Length: 30\r\n\r\n", 5.0], b""),
}


@pytest.mark.parametrize("where", TRICKLES, ids=list(TRICKLES))
def test_a_trickling_receiver_is_cut_off_at_the_attempt_deadline(world, raw_receiver, settings, where):
    settings.WEBHOOK_TIMEOUT_SECONDS = 1
    head, tail = TRICKLES[where]
    if tail is None:
        head, tail = [], head[0]
    reply = head + [part for byte in tail for part in (0.25, bytes([byte]))]
    receiver = raw_receiver(reply)
    delivery_id = one_delivery(world, receiver.url())

    started = time.monotonic()
    outcome = webhooks.deliver(delivery_id=delivery_id)
    took = time.monotonic() - started
    assert took < 1.5  # the whole attempt, not each read (the answer takes 7.5 s or more)
    assert webhooks.lease_seconds() >= webhooks.timeout_seconds() + 30  # so no second attempt can start meanwhile
    attempt = WebhookDelivery.objects.get(pk=delivery_id).attempt_log.get()
    assert attempt.duration_ms < 1500
    if where == "body":
        # The receiver accepted it in time; only its body came too slowly: delivered, with what had arrived.
        assert (outcome.state, outcome.status, outcome.error) == ("delivered", 200, "")
        assert 0 < len(attempt.response_excerpt) < 30 and set(attempt.response_excerpt) == {"y"}
    elif where == "stalled body":
        assert (outcome.state, outcome.status, outcome.error, attempt.response_excerpt) == ("delivered", 200, "", "")
    else:
        assert (outcome.state, outcome.status, outcome.attempt) == ("pending", None, 1)
        assert outcome.error == "TimeoutError: no complete answer within 1s"
    assert len(receiver.hits) == 1


def test_the_lease_always_outlasts_the_attempt_deadline(settings):
    for timeout in (1, 10, 300):
        settings.WEBHOOK_TIMEOUT_SECONDS = timeout
        assert webhooks.lease_seconds() >= timeout + 30


def test_an_error_of_ours_is_a_counted_failed_attempt_and_logged(world, receiver, settings, caplog):
    settings.WEBHOOK_MAX_ATTEMPTS = 2
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.05
    delivery_id = one_delivery(world, receiver.url())
    # A damaged endpoint row: the secret decrypts, but is no Standard Webhooks secret (signing raises).
    WebhookEndpoint.objects.update(secret_encrypted=webhooks.encrypt_secret("whsec_"))

    with caplog.at_level(logging.ERROR, logger="governance.webhooks"):
        first = webhooks.deliver(delivery_id=delivery_id)
        assert (first.state, first.attempt, first.status) == ("pending", 1, None)
        wait_until_due(delivery_id)
        second = webhooks.deliver(delivery_id=delivery_id)
    assert (second.state, second.attempt) == ("failed", 2)
    assert second.error == "internal error (EmptyWebhookSecretError); see the worker log"
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert (delivery.state, delivery.attempts) == ("failed", 2)
    assert delivery.attempt_log.count() == 2
    assert receiver.requests == []
    # The programming error stays visible: logged with its traceback, once per attempt.
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(r.exc_info and r.exc_info[0].__name__ == "EmptyWebhookSecretError" for r in errors)


SETTINGS_FILE = str(Path(__file__).resolve().parents[2] / "config" / "settings.py")


def test_secret_key_fallbacks_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "the-new-key-" + "n" * 40)
    monkeypatch.setenv("SECRET_KEY_FALLBACKS", "the-old-key-" + "o" * 40 + ", an-older-key-" + "p" * 40)
    config = runpy.run_path(SETTINGS_FILE)
    assert config["SECRET_KEY_FALLBACKS"] == ["the-old-key-" + "o" * 40, "an-older-key-" + "p" * 40]
    assert "SECRET_KEY_FALLBACKS" in config["OWN_ENVIRONMENT"]  # the registry's own: no credentials_ref may name it
    monkeypatch.delenv("SECRET_KEY_FALLBACKS")
    assert runpy.run_path(SETTINGS_FILE)["SECRET_KEY_FALLBACKS"] == []


def test_a_webhook_created_under_an_old_key_still_signs_after_rotation(world, receiver, settings):
    key_a, key_b = "key-a-" + "a" * 50, "key-b-" + "b" * 50
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = key_a, []
    _, secret = webhooks.endpoint_create(
        actor=world["admin"].user, name="hook", url=receiver.url(), event_types=["version.registered"]
    )

    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = key_b, [key_a]  # rotated, the old key kept as fallback
    register(world["owner"].user, world["model"], "v1")
    [delivery_id] = webhooks.dispatch().delivery_ids
    outcome = webhooks.deliver(delivery_id=delivery_id)
    assert (outcome.state, outcome.status) == (DeliveryState.DELIVERED, 200)
    [got] = receiver.to("/hook")
    assert Webhook(secret).verify(got.body, got.headers)["type"] == "version.registered"

    settings.SECRET_KEY_FALLBACKS = []  # the old key dropped too early: a clear error, not a wrong signature
    register(world["owner"].user, world["model"], "v2")
    [delivery_id] = webhooks.dispatch().delivery_ids
    outcome = webhooks.deliver(delivery_id=delivery_id)
    assert outcome.status is None and "cannot decrypt the endpoint secret" in outcome.error
    assert len(receiver.to("/hook")) == 1
