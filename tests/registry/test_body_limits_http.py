"""Request body limits through gunicorn, the production server, over real HTTP.

- A JSON body is bounded by MAX_JSON_BODY_BYTES alone, and its 413 names the limit: Django's own limit on a body
  it reads whole (1 MiB) answered first, with no limit in the error, and refused a manifest of 10,000 files
  (the documented maximum) with ordinary paths.
- An artifact upload without Content-Length (a chunked body: `curl -T -` from a pipe) is a 411: it was read as
  the empty file, a 400 digest_mismatch that blamed the bytes.
- An artifact upload above MAX_ARTIFACT_BYTES is a 413 before a byte of it is read; a stored one is audited.
"""

import hashlib
import http.client
import json
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from accounts import roles, scopes, services
from audit.models import AuditEvent
from registry.manifest import MAX_FILES
from registry.models import ModelVersion
from tests import processes

pytestmark = pytest.mark.slow

ARTIFACT_LIMIT = 64 * 1024  # the server's MAX_ARTIFACT_BYTES
MODEL = "/api/v1/models/acme/churn"


@dataclass
class Server:
    port: int
    artifacts: Path
    log: Path


@pytest.fixture
def web(transactional_db, tmp_path):
    """gunicorn on this test's database, one per test (what a worker caches, a user's permissions say, must not
    outlive the test's rows); JSON bodies at their default limit."""
    processes.require_postgresql()
    workdir = tmp_path
    broker = settings.CELERY_BROKER_URL  # the run's own Redis database; nothing here needs a worker
    env = processes.service_env(broker, DATA_DIR=str(workdir / "data"), MAX_ARTIFACT_BYTES=str(ARTIFACT_LIMIT))
    port = processes.free_port()
    proc = processes.start_web(env, workdir / "web.log", port)
    yield Server(port, workdir / "data" / "artifacts", workdir / "web.log")
    processes.stop(proc)


@pytest.fixture
def token(django_user_model, web):
    """A model owner's full-scope token, committed (gunicorn reads the same database), and acme/churn."""
    user = django_user_model.objects.create_user(username="owner", password="pw-owner-123456")
    user.groups.add(roles.ensure_roles()[roles.MODEL_OWNERS])
    plaintext = services.token_create(actor="test", user=user, name="http", scopes=list(scopes.ALL)).plaintext
    status, body = request(web, "POST", "/api/v1/models", plaintext, json.dumps({"namespace": "acme", "name": "churn"}))
    assert status == 201, body
    return plaintext


def request(web: Server, method: str, path: str, token: str, body, content_type: str = "application/json"):
    """One request with http.client (a body without a length, e.g. a generator, goes chunked): (status, JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=60)
    try:
        conn.request(method, path, body, {"Authorization": f"Bearer {token}", "Content-Type": content_type})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def headers_only(web: Server, method: str, path: str, token: str, content_type: str, length: int):
    """Send a request's head declaring `length` bytes of body, and none of them: (status, JSON). A server that
    waited for the body would time out here."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", web.port), timeout=15) as sock:
        sock.sendall(head.encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def blobs(web: Server) -> list[Path]:
    return [p for p in (web.artifacts / "blobs").rglob("*") if p.is_file()] if web.artifacts.exists() else []


def test_a_manifest_of_the_most_files_allowed_is_registered(web, token):
    """docs/ci.md: a version may hold 10,000 files. With ordinary paths that is a body of about 1.4 MB, over
    Django's 1 MiB; it was a 413."""
    files = [
        {
            "path": f"shards/layer-{i:05d}/weights.safetensors",
            "size": i,
            "sha256": hashlib.sha256(b"%d" % i).hexdigest(),
        }
        for i in range(MAX_FILES)
    ]
    body = json.dumps({"artifact_uri": "s3://bucket/models/churn", "manifest": {"files": files}})
    assert len(body) > 1024 * 1024
    status, answer = request(web, "POST", f"{MODEL}/versions", token, body)
    assert status == 201, answer
    assert len(ModelVersion.objects.get(model__name="churn", number=1).manifest["files"]) == MAX_FILES


def test_a_json_body_over_the_limit_is_a_413_naming_it(web, token):
    limit = settings.MAX_JSON_BODY_BYTES
    status, answer = headers_only(web, "POST", f"{MODEL}/versions", token, "application/json", limit + 1)
    assert status == 413, answer
    error = answer["error"]
    assert error["code"] == "payload_too_large"
    assert error["detail"] == {"limit_bytes": limit}
    assert f"{limit + 1} bytes" in error["message"]
    assert f"the limit for JSON bodies is {limit} bytes (MAX_JSON_BODY_BYTES)" in error["message"]


def test_an_upload_without_content_length_is_a_411(web, token):
    """http.client sends a generator chunked, as curl does a pipe (`curl -T -`)."""
    content = b"weights streamed from a pipe"
    digest = hashlib.sha256(content).hexdigest()
    status, answer = request(
        web, "PUT", f"{MODEL}/artifacts/sha256:{digest}", token, iter([content]), "application/octet-stream"
    )
    assert status == 411, answer
    assert answer["error"]["code"] == "length_required"
    assert "Content-Length" in answer["error"]["message"]
    assert blobs(web) == []


def test_an_upload_over_max_artifact_bytes_is_a_413_before_its_body_is_read(web, token):
    digest = hashlib.sha256(b"x" * (ARTIFACT_LIMIT + 1)).hexdigest()
    path = f"{MODEL}/artifacts/sha256:{digest}"
    status, answer = headers_only(web, "PUT", path, token, "application/octet-stream", ARTIFACT_LIMIT + 1)
    assert status == 413, answer
    assert answer["error"]["code"] == "payload_too_large"
    assert answer["error"]["detail"] == {"limit_bytes": ARTIFACT_LIMIT}
    assert f"at most {ARTIFACT_LIMIT} bytes (MAX_ARTIFACT_BYTES)" in answer["error"]["message"]
    assert blobs(web) == []


def test_an_upload_at_the_limit_is_stored_and_audited_once(web, token):
    content = bytes(range(256)) * (ARTIFACT_LIMIT // 256)
    assert len(content) == ARTIFACT_LIMIT
    digest = hashlib.sha256(content).hexdigest()
    path = f"{MODEL}/artifacts/sha256:{digest}"
    status, answer = request(web, "PUT", path, token, content, "application/octet-stream")
    assert (status, answer) == (201, {"sha256": digest, "size": ARTIFACT_LIMIT, "created": True})
    assert [p.name for p in blobs(web)] == [digest]

    again = request(web, "PUT", path, token, content, "application/octet-stream")
    assert again == (200, {"sha256": digest, "size": ARTIFACT_LIMIT, "created": False})
    events = list(AuditEvent.objects.filter(action="artifact.uploaded"))
    assert len(events) == 1, "only the model's first upload of the bytes is audited"
    event = events[0]
    assert (event.actor_username, event.subject_type, event.subject_repr) == (
        "owner",
        "registry.registeredmodel",
        "acme/churn",
    )
    assert json.loads(event.after) == {"sha256": digest, "size": ARTIFACT_LIMIT, "new_to_store": True}
