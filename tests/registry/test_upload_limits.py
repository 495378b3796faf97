"""Limits on what one request may send: MAX_JSON_BODY_BYTES is sized for the largest manifest the registry takes,
and MAX_ARTIFACT_BYTES bounds one upload, declared or not, keeping nothing of a body over it. Through gunicorn:
tests/registry/test_body_limits_http.py."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from audit.models import AuditEvent
from core.errors import InvalidInput, PayloadTooLarge
from registry import services
from registry.manifest import MAX_FILES, MAX_PATH
from registry.models import BlobHolding
from registry.storage import blob_store

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(personas):
    owner = personas["owner"].user
    return services.model_create(actor=owner, namespace="acme", name="churn")


class Chunks:
    """Byte chunks that count how many were taken: a refused body must not be read on."""

    def __init__(self, *chunks: bytes):
        self.chunks, self.taken = chunks, 0

    def __iter__(self):
        for chunk in self.chunks:
            self.taken += 1
            yield chunk


def nothing_kept(artifact_root: Path, sha256: str) -> bool:
    scratch = artifact_root / "tmp"
    return blob_store().size(sha256) is None and (not scratch.exists() or list(scratch.iterdir()) == [])


def test_the_default_json_limit_holds_a_registration_of_the_most_files_with_the_longest_paths():
    """docs/ci.md: a version may hold registry.manifest.MAX_FILES files; each path may be MAX_PATH characters."""
    files = [
        {"path": f"{i:05d}/" + "p" * (MAX_PATH - 6), "size": 2**63 - 1, "sha256": "f" * 64} for i in range(MAX_FILES)
    ]
    body = json.dumps({"artifact_uri": "registry://", "manifest": {"files": files}}, indent=2)
    assert len(files[0]["path"]) == MAX_PATH
    assert len(body) <= django_settings.MAX_JSON_BODY_BYTES


def test_a_body_longer_than_declared_is_refused_at_its_first_extra_byte(model, artifact_root):
    declared = b"a" * 10
    chunks = Chunks(declared, b"b", b"never read")
    with pytest.raises(InvalidInput) as refused:
        services.blob_upload(model=model, chunks=chunks, sha256=hashlib.sha256(declared).hexdigest(), size=10)
    assert refused.value.code == "size_mismatch"
    assert refused.value.detail == {"declared": 10, "received_at_least": 11}
    assert chunks.taken == 2
    assert nothing_kept(artifact_root, hashlib.sha256(declared).hexdigest())
    assert not BlobHolding.objects.exists()


def test_an_undeclared_body_over_max_artifact_bytes_is_refused_at_its_first_byte_past_it(
    model, artifact_root, settings
):
    """A caller of the service that streams without a size is bounded too."""
    settings.MAX_ARTIFACT_BYTES = 8
    sha = hashlib.sha256(b"123456789").hexdigest()
    chunks = Chunks(b"1234", b"5678", b"9", b"never read")
    with pytest.raises(PayloadTooLarge) as refused:
        services.blob_upload(model=model, chunks=chunks, sha256=sha)
    assert refused.value.detail == {"limit_bytes": 8}
    assert "more than 8 bytes" in refused.value.message
    assert chunks.taken == 3
    assert nothing_kept(artifact_root, sha)
    assert not BlobHolding.objects.exists()
    assert not AuditEvent.objects.filter(action="artifact.uploaded").exists()


def test_a_declared_size_over_max_artifact_bytes_is_refused_before_a_byte_is_read(model, artifact_root, settings):
    settings.MAX_ARTIFACT_BYTES = 8
    chunks = Chunks(b"123456789")
    with pytest.raises(PayloadTooLarge) as refused:
        services.blob_upload(model=model, chunks=chunks, sha256=hashlib.sha256(b"123456789").hexdigest(), size=9)
    assert refused.value.detail == {"limit_bytes": 8}
    assert "This file is 9 bytes; one artifact may be at most 8 bytes (MAX_ARTIFACT_BYTES)" in refused.value.message
    assert chunks.taken == 0


def test_a_models_first_upload_of_some_bytes_is_audited_and_a_repeat_is_not(model, personas):
    """The second model sends bytes the store already has: it holds them now (its viewers may name them in a
    manifest), which is a change like any other."""
    content = b"weights"
    sha = hashlib.sha256(content).hexdigest()
    owner = personas["owner"].user
    other = services.model_create(actor=owner, namespace="acme", name="other")
    first = services.blob_upload(actor=owner, model=model, chunks=[content], sha256=sha, size=7)
    again = services.blob_upload(actor=owner, model=other, chunks=[content], sha256=sha, size=7)
    repeated = services.blob_upload(actor=owner, model=model, chunks=[content], sha256=sha, size=7)
    assert (first.created, again.created, repeated.created) == (True, False, False)
    events = list(AuditEvent.objects.filter(action="artifact.uploaded").order_by("seq"))
    assert [(e.subject_id, e.actor_username, json.loads(e.after)) for e in events] == [
        (str(model.pk), "owner", {"sha256": sha, "size": 7, "new_to_store": True}),
        (str(other.pk), "owner", {"sha256": sha, "size": 7, "new_to_store": False}),
    ]
    assert set(BlobHolding.objects.values_list("model_id", flat=True)) == {model.pk, other.pk}


def test_an_upload_over_the_limit_through_the_api_is_413(model, personas, settings, artifact_root):
    settings.MAX_ARTIFACT_BYTES = 4
    content = b"12345"
    sha = hashlib.sha256(content).hexdigest()
    response = (
        personas["owner"]
        .client()
        .put(f"/api/v1/models/acme/churn/artifacts/sha256:{sha}", data=content, content_type="application/octet-stream")
    )
    assert response.status_code == 413, response.content
    assert response.json()["error"]["detail"] == {"limit_bytes": 4}
    assert nothing_kept(artifact_root, sha)
    assert not BlobHolding.objects.filter(model=model).exists()


def run_settings(**env: str) -> subprocess.CompletedProcess:
    probe = "import django; django.setup(); from django.conf import settings; print(settings.MAX_ARTIFACT_BYTES)"
    return subprocess.run(  # noqa: S603
        [sys.executable, "-c", probe],
        cwd=django_settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_max_artifact_bytes_comes_from_the_environment_and_has_no_off_switch():
    assert int(run_settings(MAX_ARTIFACT_BYTES="1000").stdout.splitlines()[-1]) == 1000
    default = run_settings(MAX_ARTIFACT_BYTES="")
    assert int(default.stdout.splitlines()[-1]) == 100 * 1024**3, default.stderr[-2000:]
    for value in ("0", "-1"):
        refused = run_settings(MAX_ARTIFACT_BYTES=value)
        assert refused.returncode != 0
        assert f"MAX_ARTIFACT_BYTES must be more than 0 bytes, got '{value}'." in refused.stderr
