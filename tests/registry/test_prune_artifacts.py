"""`manage.py prune_artifacts`: stored blobs no version names go once every upload of them is old, with their
holdings, audited; and never from under a registration or an upload that relies on them (registry.pruning)."""

import hashlib
import io
import os
from datetime import timedelta

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from audit.models import AuditEvent
from registry.models import BlobHolding, ModelVersion
from registry.pruning import prune_artifacts
from registry.storage import blob_key, blob_store
from tests import processes
from tests.governance.test_lock_order import in_thread
from tests.registry.helpers import file_entry
from tests.registry.test_s3 import BUCKET, moto_server, s3  # noqa: F401

BASE = "/api/v1/models/acme/churn"
NAMED, UNNAMED = b"weights the version names", b"weights of a registration that never came"
WEEK_AGO = timezone.now() - timedelta(days=8)


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def upload(client, content: bytes, model: str = "acme/churn"):
    return client.put(
        f"/api/v1/models/{model}/artifacts/sha256:{sha(content)}", data=content, content_type="application/octet-stream"
    )


def register(client, *contents: bytes, model: str = "acme/churn"):
    manifest = {"files": [file_entry(f"f{i}.bin", c) for i, c in enumerate(contents)]}
    return client.post(f"/api/v1/models/{model}/versions/", {"manifest": manifest}, format="json")


def age_everything(root) -> None:
    """As if every upload so far were eight days old."""
    BlobHolding.objects.update(created_at=WEEK_AGO)
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (WEEK_AGO.timestamp(), WEEK_AGO.timestamp()))


def prune(*args) -> str:
    out = io.StringIO()
    call_command("prune_artifacts", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def owner(personas):
    client = personas["owner"].client()
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    for content in (NAMED, UNNAMED):
        assert upload(client, content).status_code == 201
    assert register(client, NAMED).status_code == 201
    return client


@pytest.mark.django_db
def test_an_old_upload_no_version_names_goes_with_its_holding_audited(owner, artifact_root):
    age_everything(artifact_root)
    events = AuditEvent.objects.count()

    out = prune()

    assert f"deleted sha256:{sha(UNNAMED)}" in out and "deleted 1 blob(s)" in out, out
    assert not (artifact_root / blob_key(sha(UNNAMED))).exists()
    assert (artifact_root / blob_key(sha(NAMED))).read_bytes() == NAMED
    assert list(BlobHolding.objects.values_list("sha256", flat=True)) == [sha(NAMED)]
    released, deleted = AuditEvent.objects.order_by("seq")[events:]
    assert (released.action, released.subject_repr, released.actor_username) == (
        "artifact.released",
        "acme/churn",
        "cli:prune_artifacts",
    )
    assert sha(UNNAMED) in released.before
    assert (deleted.action, deleted.subject_type, deleted.subject_id) == (
        "artifact.deleted",
        "registry.blob",
        sha(UNNAMED),
    )
    assert f'"size":{len(UNNAMED)}' in deleted.before
    call_command("audit_verify", stdout=io.StringIO())  # the chain is whole

    # The model holds it no more: naming it is refused until it is sent again, which stores it anew.
    refused = register(owner, UNNAMED)
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "artifacts_missing")
    again = upload(owner, UNNAMED)
    assert (again.status_code, again.json()["created"]) == (201, True)
    assert register(owner, UNNAMED).status_code == 201


@pytest.mark.django_db
def test_what_was_sent_lately_or_is_named_anywhere_stays(owner, personas, artifact_root):
    """Sending old bytes again counts as lately; a blob another model's version names stays though the model it
    was sent for names it in no version."""
    fork_content = b"weights a fork registers from acme/churn's upload"
    assert upload(owner, fork_content).status_code == 201
    assert owner.post("/api/v1/models/", {"namespace": "acme", "name": "fork"}, format="json").status_code == 201
    assert register(owner, fork_content, model="acme/fork").status_code == 201  # no upload: churn holds it
    age_everything(artifact_root)
    resent = upload(owner, UNNAMED)
    assert (resent.status_code, resent.json()["created"]) == (200, False)

    assert "deleted 0 blob(s)" in prune()
    for content in (NAMED, UNNAMED, fork_content):
        assert (artifact_root / blob_key(sha(content))).read_bytes() == content
    assert BlobHolding.objects.count() == 3


@pytest.mark.django_db
def test_a_dry_run_lists_and_changes_nothing(owner, artifact_root):
    age_everything(artifact_root)
    events, holdings = AuditEvent.objects.count(), BlobHolding.objects.count()

    out = prune("--dry-run")

    assert f"would delete sha256:{sha(UNNAMED)}" in out and f"would delete 1 blob(s), {len(UNNAMED)} bytes" in out
    assert (artifact_root / blob_key(sha(UNNAMED))).exists()
    assert (AuditEvent.objects.count(), BlobHolding.objects.count()) == (events, holdings)


@pytest.mark.django_db
def test_unheld_blobs_and_scratch_go_only_when_old(owner, artifact_root):
    """Bytes stored with no holding (their upload was cut off before recording it) and scratch copies of uploads."""
    store = blob_store()
    old_unheld, new_unheld = b"stored, never held, long ago", b"stored, never held, just now"
    for content in (old_unheld, new_unheld):
        store.put([content], expected_sha256=sha(content))
    scratch = artifact_root / "tmp"
    (scratch / "cut-off-long-ago").write_bytes(b"x")
    (scratch / "being-written").write_bytes(b"y")
    week_ago = WEEK_AGO.timestamp()
    for path in (artifact_root / blob_key(sha(old_unheld)), scratch / "cut-off-long-ago"):
        os.utime(path, (week_ago, week_ago))

    out = prune()

    assert "deleted 1 blob(s)" in out and "1 scratch file(s)" in out, out
    assert store.size(sha(old_unheld)) is None and store.size(sha(new_unheld)) == len(new_unheld)
    assert sorted(p.name for p in scratch.iterdir()) == ["being-written"]
    assert AuditEvent.objects.filter(action="artifact.deleted", subject_id=sha(old_unheld)).count() == 1
    assert not AuditEvent.objects.filter(action="artifact.released").exists()


@pytest.mark.django_db
def test_a_cutoff_under_an_hour_is_refused(owner):
    with pytest.raises(CommandError, match="at least 1"):
        prune("--older-than-hours", "0.5")


@pytest.mark.django_db
def test_pruning_an_s3_bucket(s3, owner):  # noqa: F811
    """The same rules on S3: blobs listed and deleted there, old scratch keys (tmp/, staging/) too."""
    s3.put_object(Bucket=BUCKET, Key="staging/abandoned", Body=b"z")
    later = timezone.now() + timedelta(minutes=1)  # S3 sets LastModified itself: the cutoff moves instead
    BlobHolding.objects.update(created_at=WEEK_AGO)

    report = prune_artifacts(before=later)

    assert report.blobs == [sha(UNNAMED)] and report.scratch == 1
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))
    assert keys == [blob_key(sha(NAMED))]


@pytest.mark.django_db
def test_a_presigned_upload_completed_without_a_put_counts_as_sent(s3, owner):  # noqa: F811
    """A CI job told `already_stored` skips the PUT and completes: that is the bytes sent again (for its own
    model, a first holding, audited), so the pruning keeps them for the registration that follows; it deleted
    them before, and the registration was refused `artifacts_missing`."""
    assert owner.post("/api/v1/models/", {"namespace": "acme", "name": "fork"}, format="json").status_code == 201
    BlobHolding.objects.update(created_at=WEEK_AGO)
    cutoff = timezone.now()  # S3 sets LastModified itself: the blobs were stored before it, the completes come after
    events = AuditEvent.objects.count()
    for model in ("acme/churn", "acme/fork"):
        body = {"sha256": sha(UNNAMED), "size": len(UNNAMED)}
        started = owner.post(f"/api/v1/models/{model}/uploads", body, format="json").json()
        assert started["already_stored"] is True
        done = owner.post(f"/api/v1/models/{model}/uploads/{started['upload_id']}/complete")
        assert (done.status_code, done.json()["created"]) == (200, False)

    report = prune_artifacts(before=cutoff)

    assert report.blobs == []
    [uploaded] = AuditEvent.objects.order_by("seq")[events:]
    assert (uploaded.action, uploaded.subject_repr) == ("artifact.uploaded", "acme/fork")
    assert '"new_to_store":false' in uploaded.after
    assert register(owner, UNNAMED, model="acme/fork").status_code == 201


# --- beside registrations and uploads: the blob's lock (PostgreSQL) --------------------------------------------


def holding_the_lock(table: str, pk: int):
    """Another connection holding a row lock the code under test will wait for; returns it (rollback releases)."""
    other = psycopg.connect(**connection.get_connection_params())
    other.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE", [pk])  # noqa: S608
    return other


def waiting_on_an_advisory_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return cursor.fetchone()[0] > 0


@pytest.fixture
def postgres():
    if connection.vendor != "postgresql":
        pytest.skip("the blob locks are PostgreSQL advisory locks; SQLite serializes write transactions instead")


@pytest.mark.django_db(transaction=True)
def test_a_registration_under_way_keeps_the_blob_it_names(postgres, owner, personas, artifact_root):
    """The registration has checked the blob (shared lock) and waits for the model row: the pruning waits for it,
    then sees the version and keeps the blob."""
    age_everything(artifact_root)
    model_row = holding_the_lock("registry_registeredmodel", ModelVersion.objects.get().model_id)
    outcome = {}
    try:
        registration = in_thread(outcome, "registered", lambda: register(personas["owner"].client(), UNNAMED))
        processes.wait(waiting_on_a_row, 20, "the registration waits for the model row", interval=0.02)
        pruning = in_thread(outcome, "pruned", lambda: prune_artifacts(before=timezone.now() - timedelta(days=7)))
        processes.wait(waiting_on_an_advisory_lock, 20, "the pruning waits for the registration's lock", interval=0.02)
    finally:
        model_row.rollback()
        model_row.close()
    registration.join(20), pruning.join(20)

    assert outcome["registered"].status_code == 201, outcome
    assert outcome["pruned"].blobs == []
    assert (artifact_root / blob_key(sha(UNNAMED))).read_bytes() == UNNAMED
    assert ModelVersion.objects.count() == 2


def waiting_on_a_row() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted")
        return cursor.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("then", ["register", "upload"])
def test_a_registration_or_upload_arriving_mid_pruning_is_told_the_blob_went(
    postgres, owner, personas, artifact_root, then
):
    """The pruning holds the blob's lock and waits to delete its holding (another connection holds the row): a
    registration naming the blob, or an upload of its bytes (found stored), waits for it, then is told (nothing
    written)."""
    age_everything(artifact_root)
    head = holding_the_lock("registry_blobholding", BlobHolding.objects.get(sha256=sha(UNNAMED)).pk)
    outcome = {}
    client = personas["owner"].client()
    act = (lambda: register(client, UNNAMED)) if then == "register" else (lambda: upload(client, UNNAMED))
    try:
        pruning = in_thread(outcome, "pruned", lambda: prune_artifacts(before=timezone.now() - timedelta(days=7)))
        processes.wait(waiting_on_a_row, 20, "the pruning waits for the holding's row", interval=0.02)
        arriving = in_thread(outcome, "answered", act)
        processes.wait(waiting_on_an_advisory_lock, 20, f"the {then} waits for the pruning's lock", interval=0.02)
    finally:
        head.rollback()
        head.close()
    pruning.join(20), arriving.join(20)

    assert outcome["pruned"].blobs == [sha(UNNAMED)]
    answer = outcome["answered"]
    expected = (400, "artifacts_missing") if then == "register" else (409, "artifact_pruned")
    assert (answer.status_code, answer.json()["error"]["code"]) == expected, answer.json()
    assert blob_store().size(sha(UNNAMED)) is None
    assert not BlobHolding.objects.filter(sha256=sha(UNNAMED)).exists()
    assert ModelVersion.objects.count() == 1
    assert upload(client, UNNAMED).status_code == 201  # sent again, stored anew


@pytest.mark.django_db(transaction=True)
def test_a_registration_of_many_files_takes_a_bounded_number_of_locks(postgres, owner, personas):
    """One lock per blob exhausted PostgreSQL's shared lock table (about 6,400 entries by default) with a manifest
    of 10,000 files: the locks are per first byte of the sha256, at most 256 whatever the manifest."""
    from registry import services
    from registry.models import RegisteredModel

    model = RegisteredModel.objects.get(namespace="acme", name="churn")
    contents = [f"file {i}".encode() for i in range(400)]
    for content in contents:
        services.blob_upload(model=model, chunks=[content], sha256=sha(content), size=len(content), actor=None)
    model_row = holding_the_lock("registry_registeredmodel", model.pk)
    outcome = {}
    try:
        registration = in_thread(outcome, "registered", lambda: register(personas["owner"].client(), *contents))
        processes.wait(
            waiting_on_a_row, 20, "the registration waits for the model row, its blob locks held", interval=0.02
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
            held = cursor.fetchone()[0]
    finally:
        model_row.rollback()
        model_row.close()
    registration.join(20)

    assert 0 < held <= 256, held
    assert outcome["registered"].status_code == 201, outcome["registered"].json()
