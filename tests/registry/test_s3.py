"""Artifacts on S3, against a real moto server process over HTTP: uploads through the API, presigned
uploads, and registration of files that live elsewhere (s3://, hf://).

The moto server is started once per session; every test resets it and recreates the bucket. If it
cannot start, the tests fail (they never skip).
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

from audit.models import AuditEvent
from core.errors import DomainError
from registry.models import ModelVersion
from registry.storage import blob_key, blob_store
from tests.registry.helpers import file_entry

BASE = "/api/v1/models/acme/churn"
BUCKET = "registry-artifacts"
PART = 8 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _moto_executable() -> str:
    found = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not os.access(found, os.X_OK):
        pytest.fail("moto_server is not installed: pip install 'moto[server]' (it is in the test extras)")
    return found


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """A moto server process on a free port; yields its base URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [_moto_executable(), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1) as response:  # noqa: S310 (our URL)
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"moto_server did not answer on {url} within 30 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3(moto_server, settings, monkeypatch):
    """ARTIFACT_STORAGE=s3 against a freshly reset moto server with an empty bucket; yields a boto3 client."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    requests.post(f"{moto_server}/moto-api/reset", timeout=10).raise_for_status()
    client = boto3.client(
        "s3", endpoint_url=moto_server, region_name="us-east-1", config=Config(signature_version="s3v4")
    )
    client.create_bucket(Bucket=BUCKET)
    settings.ARTIFACT_STORAGE = "s3"
    settings.S3_BUCKET = BUCKET
    settings.S3_ENDPOINT_URL = moto_server
    settings.S3_REGION = "us-east-1"
    blob_store.cache_clear()
    yield client
    blob_store.cache_clear()


def bucket_state(client) -> tuple[list[str], list[str]]:
    """Every key in the bucket, and every unfinished multipart upload."""
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for obj in page.get("Contents", [])
    ]
    uploads = [u["Key"] for u in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]
    return sorted(keys), uploads


def read_back(client, sha256: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=blob_key(sha256))["Body"].read()


@pytest.fixture
def owner(personas):
    client = personas["owner"].client()
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    return client


def put_artifact(client, content: bytes, sha256: str | None = None):
    sha256 = sha256 or hashlib.sha256(content).hexdigest()
    return client.put(f"{BASE}/artifacts/sha256:{sha256}", data=content, content_type="application/octet-stream")


# --- uploads through the API ---------------------------------------------------------------------


def test_s3_store_is_configured(s3):
    from registry.s3 import S3BlobStore

    store = blob_store()
    assert isinstance(store, S3BlobStore) and store.bucket == BUCKET


def test_upload_through_api_then_register_round_trip(s3, owner):
    # larger than one part, so the temporary object is a real multipart upload
    big = os.urandom(PART + 12345)
    small = b"tokenizer: " + os.urandom(100)
    entries = [file_entry("model.safetensors", big), file_entry("tokenizer.json", small)]
    for content in (big, small):
        r = put_artifact(owner, content)
        assert r.status_code == 201, r.json()
        assert r.json() == {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content), "created": True}
    again = put_artifact(owner, small)
    assert again.status_code == 200 and again.json()["created"] is False

    reg = owner.post(f"{BASE}/versions/", {"manifest": {"files": entries}}, format="json")
    assert reg.status_code == 201, reg.json()
    assert reg.json()["artifact_uri"] == f"registry://acme/churn@{reg.json()['digest']}"

    # the bytes really are in the bucket, under their content address, and nothing else is
    keys, uploads = bucket_state(s3)
    assert keys == sorted(blob_key(e["sha256"]) for e in entries)
    assert uploads == []
    assert read_back(s3, entries[0]["sha256"]) == big
    assert read_back(s3, entries[1]["sha256"]) == small
    with blob_store().open(entries[1]["sha256"]) as body:
        assert body.read() == small
    assert blob_store().size(entries[0]["sha256"]) == len(big)


def test_register_refuses_files_missing_from_s3(s3, owner):
    r = owner.post(f"{BASE}/versions/", {"manifest": {"files": [file_entry("w.bin", b"never sent")]}}, format="json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "artifacts_missing"
    assert ModelVersion.objects.count() == 0


@pytest.mark.parametrize("size", [100, PART + 1], ids=["single-put", "multipart"])
def test_tampered_upload_is_rejected_and_nothing_is_left_in_the_bucket(s3, owner, size):
    declared = hashlib.sha256(b"the real weights").hexdigest()
    events_before = AuditEvent.objects.count()
    r = put_artifact(owner, os.urandom(size), sha256=declared)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "digest_mismatch"
    assert bucket_state(s3) == ([], [])
    assert blob_store().size(declared) is None
    assert AuditEvent.objects.count() == events_before
    reg = owner.post(
        f"{BASE}/versions/",
        {"manifest": {"files": [{"path": "w.bin", "size": 16, "sha256": declared}]}},
        format="json",
    )
    assert reg.status_code == 400 and reg.json()["error"]["code"] == "artifacts_missing"
    assert ModelVersion.objects.count() == 0


def test_tampered_upload_of_a_stored_blob_is_rejected_and_the_blob_untouched(s3, owner):
    content = b"genuine"
    assert put_artifact(owner, content).status_code == 201
    sha = hashlib.sha256(content).hexdigest()
    r = put_artifact(owner, b"forgery", sha256=sha)
    assert r.status_code == 400 and r.json()["error"]["code"] == "digest_mismatch"
    assert bucket_state(s3) == ([blob_key(sha)], [])
    assert read_back(s3, sha) == content


def test_interrupted_upload_leaves_nothing_in_the_bucket(s3):
    """A client that goes away mid-body: the multipart upload of the temporary object is aborted."""

    def chunks():
        yield os.urandom(PART)
        yield os.urandom(PART)
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        blob_store().put(chunks(), expected_sha256="0" * 64)
    assert bucket_state(s3) == ([], [])


@pytest.mark.parametrize("declared", [PART + 1, None], ids=["longer-than-declared", "over-the-limit"])
def test_a_body_refused_while_streaming_leaves_nothing_in_the_bucket(s3, owner, settings, declared):
    """MAX_ARTIFACT_BYTES and the declared size are enforced while the body streams into a multipart upload:
    the upload of the temporary object is aborted, no blob appears and nothing is audited."""
    from registry import services
    from registry.models import RegisteredModel

    settings.MAX_ARTIFACT_BYTES = 2 * PART
    content = os.urandom(2 * PART + 1)
    events_before, taken = AuditEvent.objects.count(), []

    def chunks():
        for piece in (content[:PART], content[PART : 2 * PART], content[2 * PART :], b"never read"):
            taken.append(len(piece))
            yield piece

    with pytest.raises(DomainError) as refused:
        services.blob_upload(
            model=RegisteredModel.objects.get(name="churn"),
            chunks=chunks(),
            sha256=hashlib.sha256(content).hexdigest(),
            size=declared,
        )
    assert refused.value.code == ("size_mismatch" if declared else "payload_too_large")
    assert sum(taken) == (2 * PART if declared else 2 * PART + 1), "refused at the first byte past the bound"
    assert bucket_state(s3) == ([], [])
    assert AuditEvent.objects.count() == events_before


@pytest.mark.parametrize("size", [1, PART, 78 * 1024**3, 100 * 1024**3, 5 * 1024**4])
def test_parts_of_an_upload_stay_within_s3s_limits(size):
    """S3 takes at most 10,000 parts of 5 MiB to 5 GiB (the last may be smaller): the part size grows with the
    declared size (fixed 8 MiB parts failed at 78 GiB, after the whole file was sent)."""
    from registry.s3 import part_size

    part = part_size(size)
    assert 5 * 1024**2 <= part <= 5 * 1024**3
    assert -(-size // part) <= 10_000
    assert part == PART or -(-size // (part - 1024**2)) > 10_000  # the smallest whole MiB that fits


def test_upload_larger_than_s3_takes_is_refused_before_a_byte_is_read(s3, owner, settings):
    settings.MAX_ARTIFACT_BYTES = 6 * 1024**4  # the registry's own limit (100 GiB by default) would answer first
    r = owner.put(
        f"{BASE}/artifacts/sha256:{'a' * 64}",
        data=b"",
        content_type="application/octet-stream",
        CONTENT_LENGTH=str(5 * 1024**4 + 1),
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_large", r.json()
    assert "5497558138880 bytes" in r.json()["error"]["message"]
    assert bucket_state(s3) == ([], [])


# --- presigned uploads ---------------------------------------------------------------------------


def start_upload(client, content: bytes, **override):
    body = {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content), **override}
    return client.post(f"{BASE}/uploads", body, format="json")


def send_to_presigned(upload: dict, data: bytes) -> requests.Response:
    assert upload["method"] == "PUT"
    return requests.put(upload["url"], data=data, headers=upload["headers"], timeout=30)


def test_presigned_upload_then_register(s3, owner):
    content = os.urandom(300_000)
    entry = file_entry("model.onnx", content)
    r = start_upload(owner, content)
    assert r.status_code == 201, r.json()
    upload = r.json()
    assert set(upload) == {"upload_id", "url", "method", "headers", "expires_at", "already_stored"}
    assert upload["already_stored"] is False
    assert upload["headers"]["Content-Length"] == str(len(content))

    assert send_to_presigned(upload, content).status_code == 200
    keys, _ = bucket_state(s3)
    assert len(keys) == 1 and keys[0].startswith("staging/")

    done = owner.post(f"{BASE}/uploads/{upload['upload_id']}/complete")
    assert done.status_code == 201, done.json()
    assert done.json() == {"sha256": entry["sha256"], "size": len(content), "created": True}
    assert bucket_state(s3) == ([blob_key(entry["sha256"])], [])  # staging object gone

    [event] = AuditEvent.objects.filter(action="artifact.uploaded")
    assert (event.subject_repr, event.actor_username) == ("acme/churn", "owner")
    assert json.loads(event.after) == {"sha256": entry["sha256"], "size": len(content), "new_to_store": True}

    again = owner.post(f"{BASE}/uploads/{upload['upload_id']}/complete")
    assert again.status_code == 200 and again.json()["created"] is False
    assert AuditEvent.objects.filter(action="artifact.uploaded").count() == 1  # nothing received, nothing new

    reg = owner.post(f"{BASE}/versions/", {"manifest": {"files": [entry]}}, format="json")
    assert reg.status_code == 201, reg.json()
    number = reg.json()["number"]
    assert owner.get(f"{BASE}/versions/{number}").json()["manifest"] == {"files": [entry]}
    assert read_back(s3, entry["sha256"]) == content

    # the same file again: the registry says it already has it; complete without a PUT is 200
    second = start_upload(owner, content).json()
    assert second["already_stored"] is True
    assert owner.post(f"{BASE}/uploads/{second['upload_id']}/complete").status_code == 200
    assert bucket_state(s3) == ([blob_key(entry["sha256"])], [])


def test_presigned_uploads_of_another_models_blob_need_the_bytes(s3, owner, personas):
    """The CI bot may not view acme/churn: for its own model the registry does not say it holds acme's file
    (already_stored was true for any stored sha256), and completing without a PUT is not a way in."""
    content = os.urandom(1000)
    entry = file_entry("w.bin", content)
    first = start_upload(owner, content).json()
    assert send_to_presigned(first, content).status_code == 200
    assert owner.post(f"{BASE}/uploads/{first['upload_id']}/complete").status_code == 201

    bot = personas["ci_bot"].client()
    assert bot.post("/api/v1/models/", {"namespace": "ci", "name": "other"}, format="json").status_code == 201
    theirs = "/api/v1/models/ci/other"
    upload = bot.post(f"{theirs}/uploads", {"sha256": entry["sha256"], "size": len(content)}, format="json").json()
    assert upload["already_stored"] is False
    unsent = bot.post(f"{theirs}/uploads/{upload['upload_id']}/complete")
    assert unsent.status_code == 404 and unsent.json()["error"]["code"] == "upload_not_found"
    # word for word the answer for bytes no model holds: whether a hidden model holds them is not told
    never = bot.post(
        f"{theirs}/uploads", {"sha256": hashlib.sha256(b"never stored").hexdigest(), "size": 12}, format="json"
    ).json()
    absent = bot.post(f"{theirs}/uploads/{never['upload_id']}/complete")
    assert absent.status_code == 404
    assert absent.json()["error"]["message"].replace(never["upload_id"], "ID") == unsent.json()["error"][
        "message"
    ].replace(upload["upload_id"], "ID")
    refused = bot.post(f"{theirs}/versions/", {"manifest": {"files": [entry]}}, format="json")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "artifacts_missing"

    wrong = os.urandom(1000)
    assert send_to_presigned(upload, wrong).status_code == 200
    forged = bot.post(f"{theirs}/uploads/{upload['upload_id']}/complete")
    assert forged.status_code == 400 and forged.json()["error"]["code"] == "digest_mismatch"

    upload = bot.post(f"{theirs}/uploads", {"sha256": entry["sha256"], "size": len(content)}, format="json").json()
    assert send_to_presigned(upload, content).status_code == 200
    sent = bot.post(f"{theirs}/uploads/{upload['upload_id']}/complete")
    assert (sent.status_code, sent.json()["created"]) == (201, True)  # a hidden model's holding is not told
    uploaded = AuditEvent.objects.filter(action="artifact.uploaded").order_by("seq")
    assert [(e.subject_repr, json.loads(e.after)["new_to_store"]) for e in uploaded] == [
        ("acme/churn", True),
        ("ci/other", False),  # the bot's model holds them from now on
    ]
    assert bot.post(f"{theirs}/versions/", {"manifest": {"files": [entry]}}, format="json").status_code == 201
    assert bucket_state(s3) == ([blob_key(entry["sha256"])], [])


@pytest.mark.parametrize("sent", [b"evil-bytes-of-same-length!", b"short"], ids=["same-size", "other-size"])
def test_presigned_upload_of_wrong_bytes_is_rejected_and_staging_deleted(s3, owner, sent):
    declared = b"genuine-bytes-of-this-size"
    assert len(sent) != len(declared) or sent != declared
    upload = start_upload(owner, declared).json()
    # moto does not check signatures, so the wrong bytes reach the staging key (real S3 would also
    # refuse a body whose length differs from the signed Content-Length)
    assert send_to_presigned(upload, sent).status_code == 200
    assert len(bucket_state(s3)[0]) == 1

    events_before = AuditEvent.objects.count()
    r = owner.post(f"{BASE}/uploads/{upload['upload_id']}/complete")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "digest_mismatch"
    assert r.json()["error"]["detail"]["received"] == hashlib.sha256(sent).hexdigest()
    assert bucket_state(s3) == ([], [])
    assert AuditEvent.objects.count() == events_before
    # and there is nothing to register
    entry = file_entry("w.bin", declared)
    reg = owner.post(f"{BASE}/versions/", {"manifest": {"files": [entry]}}, format="json")
    assert reg.status_code == 400 and reg.json()["error"]["code"] == "artifacts_missing"


def test_complete_without_upload_is_404(s3, owner):
    upload = start_upload(owner, b"not sent").json()
    r = owner.post(f"{BASE}/uploads/{upload['upload_id']}/complete")
    assert r.status_code == 404 and r.json()["error"]["code"] == "upload_not_found"
    r = owner.post(f"{BASE}/uploads/not-an-upload-id/complete")
    assert r.status_code == 404 and r.json()["error"]["code"] == "upload_not_found"
    assert bucket_state(s3) == ([], [])


def test_presigned_upload_input_is_validated(s3, owner):
    r = owner.post(f"{BASE}/uploads", {"sha256": "XYZ", "size": 1}, format="json")
    assert r.status_code == 400 and "sha256" in r.json()["error"]["message"]
    r = start_upload(owner, b"x", size=5 * 1024**3 + 1)  # over S3's one-PUT limit: said as such
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_large", r.json()
    assert "S3 takes at most 5368709120 bytes in one PUT" in r.json()["error"]["message"]
    assert list(r.json()["error"]["detail"]) == ["size"]
    r = start_upload(owner, b"x", extra=1)
    assert r.status_code == 400 and "extra" in r.json()["error"]["message"]


def test_a_presigned_upload_over_the_artifact_limit_is_refused_at_the_start(s3, owner, settings):
    settings.MAX_ARTIFACT_BYTES = 4
    r = start_upload(owner, b"12345")
    assert r.status_code == 400, r.json()
    error = r.json()["error"]
    assert error["code"] == "too_large" and "at most 4 bytes (MAX_ARTIFACT_BYTES)" in error["message"]
    assert list(error["detail"]) == ["size"]
    assert start_upload(owner, b"1234").status_code == 201


def test_presigned_upload_with_local_storage_is_409(owner, settings):
    assert settings.ARTIFACT_STORAGE == "local"
    r = start_upload(owner, b"anything")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "presign_unsupported"
    assert "presigned uploads need ARTIFACT_STORAGE=s3" in r.json()["error"]["message"]
    r = owner.post(f"{BASE}/uploads/{'0' * 64}.8.{'0' * 32}/complete")
    assert r.status_code == 409 and r.json()["error"]["code"] == "presign_unsupported"


@pytest.mark.parametrize(
    ("persona", "expected"),
    [("admin", 201), ("owner", 201), ("reviewer", 403), ("auditor", 403), ("ci_bot", 404), ("outsider", 404)],
)
def test_presigned_upload_permissions(s3, owner, personas, persona, expected):
    """Register permission on the model: readers without it get 403, everyone else 404."""
    content = b"perm-check"
    r = start_upload(personas[persona].client(), content)
    assert r.status_code == expected, r.json()
    upload_id = r.json()["upload_id"] if expected == 201 else f"{hashlib.sha256(content).hexdigest()}.10.{'0' * 32}"
    done = personas[persona].client().post(f"{BASE}/uploads/{upload_id}/complete")
    assert done.status_code == (404 if expected == 201 else expected)  # 404 for writers: nothing was PUT


def test_presigned_upload_needs_versions_write_scope(s3, owner, personas, make_token):
    from tests.conftest import bearer

    read_only = bearer(make_token(personas["owner"].user, ["read"]))
    r = start_upload(read_only, b"scoped")
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    r = read_only.post(f"{BASE}/uploads/{'0' * 64}.1.{'0' * 32}/complete")
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"


# --- files that live elsewhere: the client's declaration, not verified -----------------------------


@pytest.mark.parametrize(
    "uri", ["s3://ml-artifacts/churn/run-42", "hf://acme/churn-model@0123456789abcdef0123456789abcdef01234567"]
)
@pytest.mark.parametrize("storage", ["s3", "local"])
def test_external_artifacts_are_registered_as_declared(request, owner, uri, storage):
    client = request.getfixturevalue("s3") if storage == "s3" else None
    files = [file_entry("model.bin", b"held elsewhere"), file_entry("config.json", b"{}")]
    r = owner.post(f"{BASE}/versions/", {"artifact_uri": uri, "manifest": {"files": files}}, format="json")
    assert r.status_code == 201, r.json()
    body = r.json()
    assert body["artifact_uri"] == uri
    assert body["manifest"] == {"files": sorted(files, key=lambda f: f["path"])}
    # the registry neither checked nor copied anything into its own storage
    assert blob_store().size(files[0]["sha256"]) is None
    if client is not None:
        assert bucket_state(client) == ([], [])
    again = owner.post(f"{BASE}/versions/", {"artifact_uri": uri, "manifest": {"files": files}}, format="json")
    assert again.status_code == 200 and again.json()["number"] == body["number"]


@pytest.mark.parametrize("uri", ["hf://acme/churn-model", "hf://acme/churn-model@main", "s3://b", "ftp://x/y"])
def test_external_artifact_uri_must_be_pinned_and_known(owner, uri):
    r = owner.post(
        f"{BASE}/versions/",
        {"artifact_uri": uri, "manifest": {"files": [file_entry("m.bin", b"m")]}},
        format="json",
    )
    assert r.status_code == 400 and "artifact_uri" in r.json()["error"]["message"]
