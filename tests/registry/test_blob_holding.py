"""The blob store is shared by every model, so a sha256 is not a key to a file: a manifest may name a
registry-stored blob only when a model its registrant may view holds it (its bytes were sent for that model).
Before, anyone who could register a version of any model could name another model's file by its sha256
(public for mirrored weights) and deploy a copy of it."""

import hashlib
import json

import pytest

from audit.models import AuditEvent
from registry.models import BlobHolding, ModelVersion
from tests.registry.helpers import file_entry

pytestmark = pytest.mark.django_db

WEIGHTS = b"acme's private weights"


def put(client, model: str, content: bytes):
    sha = hashlib.sha256(content).hexdigest()
    return client.put(
        f"/api/v1/models/{model}/artifacts/sha256:{sha}", data=content, content_type="application/octet-stream"
    )


def register(client, model: str, content: bytes):
    manifest = {"files": [file_entry("weights.bin", content)]}
    return client.post(f"/api/v1/models/{model}/versions/", {"manifest": manifest}, format="json")


@pytest.fixture
def stored(personas):
    """acme/churn (the owner's) holds WEIGHTS; ci/other is the CI bot's, which may not view acme/churn."""
    owner, bot = personas["owner"].client(), personas["ci_bot"].client()
    assert owner.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    assert bot.post("/api/v1/models/", {"namespace": "ci", "name": "other"}, format="json").status_code == 201
    assert put(owner, "acme/churn", WEIGHTS).status_code == 201
    assert register(owner, "acme/churn", WEIGHTS).status_code == 201
    assert bot.get("/api/v1/models/acme/churn").status_code == 404
    return owner, bot


def test_a_stored_blob_of_a_model_one_may_not_view_counts_as_not_uploaded(stored):
    _, bot = stored
    refused = register(bot, "ci/other", WEIGHTS)
    assert refused.status_code == 400, refused.json()
    assert refused.json()["error"]["code"] == "artifacts_missing"
    assert refused.json()["error"]["detail"]["missing"] == ["weights.bin"]
    assert not ModelVersion.objects.filter(model__name="other").exists()

    # Sending the bytes shows the model holds them, and then it may name them. They are stored once still, but the
    # bot is told 201 as for new bytes: "already stored" would tell it that a model hidden from it has this file.
    again = put(bot, "ci/other", WEIGHTS)
    assert (again.status_code, again.json()["created"]) == (201, True)
    assert register(bot, "ci/other", WEIGHTS).status_code == 201
    assert BlobHolding.objects.filter(sha256=hashlib.sha256(WEIGHTS).hexdigest()).count() == 2
    # ... and once its own model holds them, sending them again is "already stored".
    assert put(bot, "ci/other", WEIGHTS).status_code == 200
    uploaded = AuditEvent.objects.filter(action="artifact.uploaded").order_by("seq")
    assert [json.loads(e.after)["new_to_store"] for e in uploaded] == [True, False]  # the auditor's truth


def test_bytes_a_visible_model_holds_are_already_stored(stored):
    owner, _ = stored
    assert owner.post("/api/v1/models/", {"namespace": "acme", "name": "fork"}, format="json").status_code == 201
    sent = put(owner, "acme/fork", WEIGHTS)
    assert (sent.status_code, sent.json()["created"]) == (200, False)


def test_a_blob_a_visible_model_holds_needs_no_upload(stored, personas):
    """The owner may view acme/churn: a new model of theirs may name its files without sending them again."""
    owner, _ = stored
    assert owner.post("/api/v1/models/", {"namespace": "acme", "name": "fork"}, format="json").status_code == 201
    assert register(owner, "acme/fork", WEIGHTS).status_code == 201


def test_wrong_bytes_hold_nothing(stored):
    _, bot = stored
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    forged = bot.put(
        f"/api/v1/models/ci/other/artifacts/sha256:{sha}", data=b"guess", content_type="application/octet-stream"
    )
    assert forged.status_code == 400 and forged.json()["error"]["code"] == "digest_mismatch"
    assert register(bot, "ci/other", WEIGHTS).status_code == 400


def test_the_migration_credits_every_model_with_the_files_its_versions_name(stored):
    """Versions registered before holdings existed keep working: 0007 records what their manifests name."""
    import importlib

    from django.apps import apps

    migration = importlib.import_module("registry.migrations.0007_blob_holding")
    BlobHolding.objects.all().delete()
    migration.versions_hold_their_files(apps, None)
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    assert list(BlobHolding.objects.values_list("model__name", "sha256")) == [("churn", sha)]
    owner, _ = stored
    assert owner.post("/api/v1/models/", {"namespace": "acme", "name": "fork"}, format="json").status_code == 201
    assert register(owner, "acme/fork", WEIGHTS).status_code == 201


def test_a_file_over_the_artifact_limit_is_refused_at_registration_before_any_upload(stored, settings):
    """Its upload would be a 413 before a byte is read (the CLI saw the connection cut mid-body): registering a
    manifest naming one the model does not hold says so first, naming it. A held file is not judged again."""
    owner, _ = stored
    settings.MAX_ARTIFACT_BYTES = len(WEIGHTS)
    big = b"x" * (len(WEIGHTS) + 1)
    manifest = {"files": [file_entry("weights.bin", WEIGHTS), file_entry("big.bin", big), file_entry("s.bin", b"s")]}
    refused = owner.post("/api/v1/models/acme/churn/versions/", {"manifest": manifest}, format="json")
    assert refused.status_code == 400, refused.json()
    error = refused.json()["error"]
    assert error["code"] == "too_large" and error["detail"] == {"too_large": ["big.bin"]}
    assert error["message"].startswith(f"big.bin: This file is {len(big)} bytes; one artifact may be at most")
    small = {"files": [file_entry("weights.bin", WEIGHTS), file_entry("s.bin", b"s")]}
    missing = owner.post("/api/v1/models/acme/churn/versions/", {"manifest": small}, format="json")
    assert missing.json()["error"]["code"] == "artifacts_missing"  # what may still be uploaded: as before
    assert ModelVersion.objects.filter(model__name="churn").count() == 1
