"""A client that stops sending mid-request (a CI runner preempted during an upload, a network partition) frees its
gunicorn thread after REQUEST_IO_TIMEOUT_SECONDS (core.middleware.RequestIOTimeoutMiddleware): before, each held a
thread for good, and as many of them as threads (gunicorn.conf.py) left the registry answering nothing.

A real gunicorn with the project's gunicorn.conf.py, one worker of two threads, and raw sockets that stall."""

import hashlib
import http.client
import json
import socket
import struct
import time

import pytest

from accounts import roles, scopes, services
from audit.models import AuditEvent
from registry.models import BlobHolding
from tests import processes

pytestmark = pytest.mark.slow

IO_TIMEOUT = 2  # seconds
MB = 1024 * 1024


@pytest.fixture
def token(transactional_db, django_user_model) -> str:
    """Committed: the web process reads it."""
    owner = django_user_model.objects.create_user(username="owner", password="pw-owner-123456")
    owner.groups.add(roles.ensure_roles()[roles.MODEL_OWNERS])
    return services.token_create(actor="test", user=owner, name="ci", scopes=list(scopes.ALL)).plaintext


def stalled(port: int, head: str, body: bytes) -> socket.socket:
    """A connection that sent `head` and `body` (less than the Content-Length it declares), then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + body)
    return sock


def answer_and_close(sock: socket.socket, within: float) -> bytes:
    """All the server sends until it closes the connection; fails if it does neither within `within` seconds."""
    received, deadline = b"", time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server neither answered nor closed a stalled request in {within} s: {received[:200]!r}")


def test_stalled_request_bodies_free_their_threads(token, tmp_path):
    processes.require_postgresql()
    data = tmp_path / "data"
    env = processes.service_env(
        "redis://127.0.0.1:1/0", DATA_DIR=str(data), REQUEST_IO_TIMEOUT_SECONDS=str(IO_TIMEOUT), GUNICORN_THREADS="2"
    )
    port = processes.free_port()
    log = tmp_path / "web.log"
    web = processes.start_web(env, log, port, "--workers", "1")
    sockets = []
    try:
        auth = f"Authorization: Bearer {token}\r\n"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        model = json.dumps({"namespace": "acme", "name": "stalled"})
        conn.request(
            "POST", "/api/v1/models", model, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
        created = conn.getresponse()
        assert created.status == 201, created.read()
        conn.close()

        # Both threads: uploads declaring 100 MB that send 1 MB and stop. Then a JSON body and a web form's that stop
        # half-way.
        digest = hashlib.sha256(b"never sent whole").hexdigest()
        upload = (
            f"PUT /api/v1/models/acme/stalled/artifacts/sha256:{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
            f"Content-Type: application/octet-stream\r\nContent-Length: {100 * MB}\r\n\r\n"
        )
        sockets += [stalled(port, upload, b"\x01" * MB) for _ in range(2)]
        post = (
            f"POST /api/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        sockets.append(stalled(port, post, b'{"namespace": "acme", '))
        form = (
            "POST /accounts/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\n"
        )
        sockets.append(stalled(port, form, b"username=owner&pass"))

        started = time.monotonic()
        health = http.client.HTTPConnection("127.0.0.1", port, timeout=3 * IO_TIMEOUT + 2)
        try:
            health.request("GET", "/healthz")
            assert health.getresponse().status == 200
        except TimeoutError:
            pytest.fail("/healthz got no answer: the stalled requests hold every thread")
        finally:
            health.close()
        assert time.monotonic() - started < 3 * IO_TIMEOUT + 2

        answers = []
        for sock in sockets:  # each answered and closed, not held
            answers.append(answer_and_close(sock, within=3 * IO_TIMEOUT + 2))
            sock.close()  # as a client would: gunicorn lingers (2 s, on its main loop) for the peer's close
        *api, web_form = answers
        for answer in api:
            status, _, rest = answer.partition(b"\r\n")
            assert status == b"HTTP/1.1 408 Request Timeout", answer[:300]
            body = json.loads(rest.partition(b"\r\n\r\n")[2])
            assert body["error"]["code"] == "request_timeout", body
        assert web_form.startswith(b"HTTP/1.1 400 Bad Request"), web_form[:300]  # Django's answer to a BadRequest

        scratch = data / "artifacts" / "tmp"
        assert scratch.is_dir() and list(scratch.glob("*")) == []  # the uploads' partial bytes were not kept
        assert not BlobHolding.objects.exists()
        assert not AuditEvent.objects.filter(action="artifact.uploaded").exists()
        text = log.read_text()
        assert text.count("the request's body stopped arriving") == 4, processes.tail(log)
        for failure in ("Unhandled error", "Internal Server Error", "Socket error"):  # no 500, no socket error
            assert failure not in text, processes.tail(log)
        assert token not in text
    finally:
        for sock in sockets:
            sock.close()
        processes.stop(web)


def test_a_body_cut_by_a_reset_is_no_server_error(token, tmp_path):
    """A client whose connection is reset mid-body (its process killed, a proxy giving up): the read fails at
    once. It was Django's UnreadablePostError, an API's 500 with a traceback in the log, for the client's fault."""
    processes.require_postgresql()
    data = tmp_path / "data"
    env = processes.service_env("redis://127.0.0.1:1/0", DATA_DIR=str(data), GUNICORN_THREADS="2")
    port = processes.free_port()
    log = tmp_path / "web.log"
    web = processes.start_web(env, log, port, "--workers", "1")
    try:
        digest = hashlib.sha256(b"never sent whole").hexdigest()
        head = (
            f"PUT /api/v1/models/acme/reset/artifacts/sha256:{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {100 * MB}\r\n\r\n"
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        model = json.dumps({"namespace": "acme", "name": "reset"})
        conn.request(
            "POST", "/api/v1/models", model, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
        assert conn.getresponse().status == 201
        conn.close()
        sock = stalled(port, head, b"\x01" * MB)
        time.sleep(0.5)  # the server is reading the body
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, not a FIN
        processes.wait(
            lambda: "before the request's body arrived" in log.read_text() or "Unhandled error" in log.read_text(),
            10,
            f"the server to give up on the reset request\n{processes.tail(log)}",
        )
        text = log.read_text()
        assert "Internal Server Error" not in text and "Traceback" not in text, processes.tail(log)
        assert "the connection was closed before the request's body arrived" in text, processes.tail(log)
        assert list((data / "artifacts" / "tmp").glob("*")) == []
        assert not BlobHolding.objects.exists()
    finally:
        processes.stop(web)
