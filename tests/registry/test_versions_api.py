import hashlib
import io
import json
import threading

import pytest
from django.db import connection, transaction
from django.db.models.signals import post_save
from django.db.utils import DatabaseError

from audit.models import AuditEvent
from registry.models import ModelVersion, RegisteredModel
from registry.storage import blob_store
from tests.conftest import bearer
from tests.registry.helpers import file_entry, register_body, s3_manifest

BASE = "/api/v1/models/acme/churn"


@pytest.fixture
def owner(personas):
    client = personas["owner"].client()
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    return client


def test_create_model_then_duplicate_is_409(owner):
    again = owner.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_exists"


def test_a_name_taken_by_a_model_one_may_not_view_says_so(owner, personas):
    """Names are unique, so the 409 tells a name is taken either way; to one who may not view the model it says what
    to do, instead of "already exists" (registry-cli --create-model then went on to a 404 saying to create it)."""
    bot = personas["ci_bot"].client()  # the owner fixture made acme/churn
    assert bot.get(BASE).status_code == 404
    taken = bot.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json")
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "name_taken"
    assert taken.json()["error"]["message"] == (
        "The name acme/churn is taken by a model you may not view: ask its owners for access, or choose another name."
    )


def test_invalid_model_name_is_400_naming_field(owner):
    r = owner.post("/api/v1/models/", {"namespace": "Acme Corp", "name": "x"}, format="json")
    assert r.status_code == 400
    assert "namespace" in r.json()["error"]["message"]


def test_register_is_idempotent_by_digest(owner):
    manifest = s3_manifest(b"weights-1")
    first = owner.post(f"{BASE}/versions/", register_body(manifest, metrics={"auc": 0.91}), format="json")
    assert first.status_code == 201, first.json()
    body = first.json()
    canonical = json.dumps({"files": manifest["files"]}, sort_keys=True, separators=(",", ":")).encode()
    assert body["digest"] == "sha256:" + hashlib.sha256(canonical).hexdigest()
    assert body["number"] == 1
    again = owner.post(f"{BASE}/versions/", register_body(manifest, metrics={"auc": 0.91}), format="json")
    assert again.status_code == 200
    assert again.json()["number"] == 1
    conflict = owner.post(f"{BASE}/versions/", register_body(manifest, metrics={"auc": 0.5}), format="json")
    assert conflict.status_code == 409
    assert conflict.json()["error"]["detail"]["fields"] == ["metrics"]
    second = owner.post(f"{BASE}/versions/", register_body(s3_manifest(b"weights-2")), format="json")
    assert second.json()["number"] == 2
    got = owner.get(f"{BASE}/versions/1").json()
    assert got["metrics"] == {"auc": 0.91} and got["digest"] == body["digest"]


@pytest.mark.parametrize(
    ("field", "value", "other"),
    [
        ("metrics", {"train_flops": 1.5e23}, {"train_flops": 1.6e23}),
        (
            "params",
            {"total_flos": 3.0573592891392e18, "lr": [1e-5, 2]},
            {"total_flos": 3.0573592891393e18, "lr": [1e-5, 2]},
        ),
        ("params", {"flag": True}, {"flag": 1}),
    ],
    ids=["large-metric", "large-param", "bool-is-not-1"],
)
def test_a_re_run_with_numbers_postgresql_rewrites_is_the_same_version(owner, field, value, other):
    """jsonb stores 1.5e23 as 150000000000000000000000; a CI re-run sending the same float again is the
    same version (200), not a digest_conflict. A different number, or 1 for true, still conflicts."""
    manifest = s3_manifest(b"weights-" + field.encode() + str(value).encode())
    first = owner.post(f"{BASE}/versions/", register_body(manifest, **{field: value}), format="json")
    assert first.status_code == 201, first.json()
    again = owner.post(f"{BASE}/versions/", register_body(manifest, **{field: value}), format="json")
    assert again.status_code == 200 and again.json()["number"] == first.json()["number"], again.json()
    conflict = owner.post(f"{BASE}/versions/", register_body(manifest, **{field: other}), format="json")
    assert conflict.status_code == 409 and conflict.json()["error"]["detail"]["fields"] == [field]


def test_a_re_run_with_deeply_nested_params_is_the_same_version(owner):
    """Comparing a re-run with the stored version recursed two frames per level: params 300 deep (valid
    JSON, stored fine the first time) made every retry of the registration a 500."""
    params = "leaf"
    for _ in range(400):
        params = {"nested": params}
    body = register_body(s3_manifest(b"deep-params"), params=params)
    first = owner.post(f"{BASE}/versions/", body, format="json")
    assert first.status_code == 201, first.json()
    again = owner.post(f"{BASE}/versions/", body, format="json")
    assert again.status_code == 200 and again.json()["number"] == first.json()["number"], again.content[:300]


def test_manifest_paths_keep_their_spaces(owner):
    """Spaces at either end are part of a file's name and of the digest the CLI computes from the files; the
    registry trimmed them, stored other names and answered another digest (the CLI then failed after
    registering)."""
    from registry import cli

    files = [file_entry(" config.json", b"{}"), file_entry("weights.bin ", b"w")]
    r = owner.post(f"{BASE}/versions/", register_body({"files": files}), format="json")
    assert r.status_code == 201, r.json()
    assert sorted(f["path"] for f in r.json()["manifest"]["files"]) == [" config.json", "weights.bin "]
    assert r.json()["digest"] == cli.manifest_digest(files)


def test_digest_ignores_file_order(owner):
    files = s3_manifest(b"a", b"b")["files"]
    one = owner.post(f"{BASE}/versions/", register_body({"files": files}), format="json").json()
    two = owner.post(f"{BASE}/versions/", register_body({"files": files[::-1]}), format="json")
    assert two.status_code == 200 and two.json()["digest"] == one["digest"]


def test_raw_sql_cannot_change_version_content(owner):
    owner.post(f"{BASE}/versions/", register_body(s3_manifest(b"w"), metrics={"auc": 0.9}), format="json")
    for sql in (
        "UPDATE registry_modelversion SET digest = 'sha256:00'",
        "UPDATE registry_modelversion SET metrics = '{\"auc\": 1.0}'",
        "DELETE FROM registry_modelversion",
    ):
        with pytest.raises(DatabaseError, match="immutable"), transaction.atomic(), connection.cursor() as cur:
            cur.execute(sql)
    # the mutable columns stay mutable
    with connection.cursor() as cur:
        cur.execute('UPDATE registry_modelversion SET tags = \'{"stage": "x"}\'')
    assert ModelVersion.objects.get().tags == {"stage": "x"}


def test_upload_then_register_in_registry_storage(owner):
    content = b"\x00model-bytes" * 1000
    entry = file_entry("model.onnx", content)
    r = owner.put(f"{BASE}/artifacts/sha256:{entry['sha256']}", data=content, content_type="application/octet-stream")
    assert r.status_code == 201 and r.json()["size"] == len(content)
    again = owner.put(
        f"{BASE}/artifacts/sha256:{entry['sha256']}", data=content, content_type="application/octet-stream"
    )
    assert again.status_code == 200
    reg = owner.post(f"{BASE}/versions/", {"manifest": {"files": [entry]}}, format="json")
    assert reg.status_code == 201, reg.json()
    assert reg.json()["artifact_uri"].startswith("registry://acme/churn@sha256:")
    with blob_store().open(entry["sha256"]) as f:
        assert f.read() == content


def test_register_refuses_files_not_uploaded(owner):
    missing = file_entry("weights.bin", b"never uploaded")
    r = owner.post(f"{BASE}/versions/", {"manifest": {"files": [missing]}}, format="json")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "artifacts_missing"
    assert ModelVersion.objects.count() == 0


def test_upload_with_a_malformed_content_length_is_a_400(owner):
    sha = hashlib.sha256(b"abc").hexdigest()
    r = owner.put(
        f"{BASE}/artifacts/sha256:{sha}", data=b"abc", content_type="application/octet-stream", CONTENT_LENGTH="3x"
    )
    assert r.status_code == 400, r.content
    assert r.json()["error"]["message"] == "Content-Length '3x' is not a number of bytes."
    assert blob_store().size(sha) is None


def test_files_sharing_content_are_checked_once_each_and_reported_by_path(owner):
    shared, lost = b"same bytes", b"never uploaded"
    entry = file_entry("a/weights.bin", shared)
    assert (
        owner.put(
            f"{BASE}/artifacts/sha256:{entry['sha256']}", data=shared, content_type="application/octet-stream"
        ).status_code
        == 201
    )
    files = [entry, file_entry("b/weights.bin", shared), file_entry("c.bin", lost), file_entry("d.bin", lost)]
    r = owner.post(f"{BASE}/versions/", {"manifest": {"files": files}}, format="json")
    assert r.status_code == 400 and r.json()["error"]["detail"]["missing"] == ["c.bin", "d.bin"], r.json()
    r = owner.post(f"{BASE}/versions/", {"manifest": {"files": files[:2]}}, format="json")
    assert r.status_code == 201, r.json()


def test_tampered_upload_is_rejected_and_nothing_kept(owner, settings):
    declared = hashlib.sha256(b"the real weights").hexdigest()
    events_before = AuditEvent.objects.count()
    r = owner.put(
        f"{BASE}/artifacts/sha256:{declared}", data=b"tampered weights", content_type="application/octet-stream"
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "digest_mismatch"
    assert blob_store().size(declared) is None
    assert list((settings.ARTIFACT_ROOT / "tmp").iterdir()) == []
    assert AuditEvent.objects.count() == events_before


def test_alias_contract(owner):
    owner.post(f"{BASE}/versions/", register_body(s3_manifest(b"1")), format="json")
    v2 = owner.post(f"{BASE}/versions/", register_body(s3_manifest(b"2")), format="json").json()
    assert owner.put(f"{BASE}/aliases/champion", {"version": 2}, format="json").status_code == 201
    got = owner.get(f"{BASE}/aliases/champion").json()
    assert (got["alias"], got["version"], got["digest"]) == ("champion", 2, v2["digest"])
    assert owner.put(f"{BASE}/aliases/champion", {"version": 1}, format="json").status_code == 200
    assert owner.get(f"{BASE}/aliases/champion").json()["version"] == 1
    assert owner.get(f"{BASE}/aliases/nope").status_code == 404


def test_an_alias_moves_under_if_match_only_from_the_state_read(owner):
    """Two CI jobs moving `candidate`: the slower one, holding the ETag it read, is refused (412) instead of moving
    it back unseen; a retry of a move that was made is a 200 whatever it holds; a delete is conditional too."""
    for content in (b"w1", b"w2", b"w3"):
        assert owner.post(f"{BASE}/versions/", register_body(s3_manifest(content)), format="json").status_code == 201
    made = owner.put(f"{BASE}/aliases/candidate", {"version": 1}, format="json")
    assert made.status_code == 201 and made["ETag"]
    read = owner.get(f"{BASE}/aliases/candidate")
    assert read["ETag"] == made["ETag"]
    assert owner.get(f"{BASE}/aliases/candidate", HTTP_IF_NONE_MATCH=read["ETag"]).status_code == 304

    first = owner.put(f"{BASE}/aliases/candidate", {"version": 3}, format="json", HTTP_IF_MATCH=read["ETag"])
    assert first.status_code == 200 and first["ETag"] != read["ETag"]
    slower = owner.put(f"{BASE}/aliases/candidate", {"version": 2}, format="json", HTTP_IF_MATCH=read["ETag"])
    assert slower.status_code == 412, slower.json()
    assert slower.json()["error"]["code"] == "precondition_failed"
    assert owner.get(f"{BASE}/aliases/candidate").json()["version"] == 3
    again = owner.put(f"{BASE}/aliases/candidate", {"version": 3}, format="json", HTTP_IF_MATCH=read["ETag"])
    assert again.status_code == 200  # already so: the retry of the first job's move
    assert AuditEvent.objects.filter(action="alias.moved").count() == 1
    refused = owner.put(f"{BASE}/aliases/new", {"version": 1}, format="json", HTTP_IF_MATCH=read["ETag"])
    assert refused.status_code == 412  # no such alias yet: no ETag matches it

    assert owner.delete(f"{BASE}/aliases/candidate", HTTP_IF_MATCH=read["ETag"]).status_code == 412
    assert owner.delete(f"{BASE}/aliases/candidate", HTTP_IF_MATCH=first["ETag"]).status_code == 204


def test_protected_alias_needs_manager(owner, personas):
    from accounts.services import permission_grant

    owner.post(f"{BASE}/versions/", register_body(s3_manifest(b"1")), format="json")
    owner.put(f"{BASE}/aliases/champion", {"version": 1, "protected": True}, format="json")
    bot = personas["ci_bot"]
    model = RegisteredModel.objects.get()
    permission_grant(actor=personas["owner"].user, principal=bot.user, perm="register_version", obj=model)
    permission_grant(actor=personas["owner"].user, principal=bot.user, perm="view_registeredmodel", obj=model)
    r = bot.client().put(f"{BASE}/aliases/champion", {"version": 1}, format="json")
    assert r.status_code == 403
    assert bot.client().put(f"{BASE}/aliases/candidate", {"version": 1}, format="json").status_code == 201
    assert bot.client().delete(f"{BASE}/aliases/champion").status_code == 403  # protected: managers only
    assert bot.client().delete(f"{BASE}/aliases/candidate").status_code == 204
    assert bot.client().delete(f"{BASE}/aliases/candidate").json()["error"]["code"] == "no_alias"
    assert owner.delete(f"{BASE}/aliases/champion").status_code == 204
    # saying an alias is not protected is no change of protection, on creation too
    unprotected = bot.client().put(f"{BASE}/aliases/nightly", {"version": 1, "protected": False}, format="json")
    assert unprotected.status_code == 201, unprotected.json()
    assert (
        bot.client().put(f"{BASE}/aliases/nightly", {"version": 1, "protected": True}, format="json").status_code == 403
    )


def test_an_alias_put_that_changes_nothing_writes_nothing(owner, personas):
    """Not even updated_by: the API would otherwise show an actor the audit log never names."""
    from audit.models import AuditEvent

    owner.post(f"{BASE}/versions/", register_body(s3_manifest(b"1")), format="json")
    assert owner.put(f"{BASE}/aliases/champion", {"version": 1}, format="json").status_code == 201
    events = AuditEvent.objects.count()
    again = personas["admin"].client().put(f"{BASE}/aliases/champion", {"version": 1}, format="json")
    assert again.status_code == 200 and AuditEvent.objects.count() == events
    assert owner.get(f"{BASE}/aliases/champion").json()["updated_by"] == "owner"


@pytest.mark.django_db(transaction=True)
def test_two_ci_jobs_creating_one_alias_at_once(personas):
    """Both find no alias; the second waits for the first instead of failing on the unique constraint (a 500)."""
    owner = personas["owner"].client()
    assert owner.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    for content in (b"1", b"2"):
        owner.post(f"{BASE}/versions/", register_body(s3_manifest(content)), format="json")
    for round_ in range(5):
        barrier, codes = threading.Barrier(2), []

        def put(version, name=f"candidate-{round_}", barrier=barrier, codes=codes):
            try:
                barrier.wait()
                codes.append(
                    personas["owner"]
                    .client()
                    .put(f"{BASE}/aliases/{name}", {"version": version}, format="json")
                    .status_code
                )
            finally:
                connection.close()

        threads = [threading.Thread(target=put, args=(v,)) for v in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [200, 201], codes


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("same_digest", [False, True])
def test_concurrent_registrations(personas, same_digest):
    owner = personas["owner"]
    assert (
        owner.client().post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    )
    barrier = threading.Barrier(8)
    results = []

    def register(i):
        try:
            barrier.wait()
            body = register_body(s3_manifest(b"same" if same_digest else f"w{i}".encode()))
            r = bearer(owner.token).post(f"{BASE}/versions/", body, format="json")
            results.append((r.status_code, r.json()["number"]))
        finally:
            connection.close()

    threads = [threading.Thread(target=register, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numbers = sorted(n for _, n in results)
    if same_digest:
        assert numbers == [1] * 8
        assert sorted(c for c, _ in results) == [200] * 7 + [201]
        assert ModelVersion.objects.count() == 1
    else:
        assert numbers == list(range(1, 9))
        assert all(c == 201 for c, _ in results)
    # a repeated digest undid its number bump with its failed statement: numbers stay gapless
    assert RegisteredModel.objects.get(namespace="acme", name="churn").latest_number == max(numbers)
    assert AuditEvent.objects.filter(action="version.registered").count() == ModelVersion.objects.count()


def test_the_registration_event_is_the_one_record_writes(personas, owner):
    """On PostgreSQL one statement bumps the number, inserts the version and appends its audit event
    (services._insert_numbered): the event is the one audit.services.record() would append (subject, actor,
    redacted canonical payload with the number the database assigned), linked, with its export line."""
    from django.core.management import call_command

    from accounts.models import ApiToken
    from audit.services import new_event

    assert connection.vendor == "postgresql"
    owner.post(f"{BASE}/versions/", register_body(s3_manifest(b"first")), format="json")
    body = register_body(
        s3_manifest(b"audited"),
        metrics={"auc": 0.9},
        source={"commit": "a" * 40},
        tags={"api_key": "k-1", "stage": "dev"},
    )
    announced = []  # the in-memory event, as listeners of new audit events see it
    post_save.connect(
        lambda instance, **kw: announced.append(instance), sender=AuditEvent, weak=False, dispatch_uid="test-announced"
    )
    try:
        r = owner.post(f"{BASE}/versions/", body, format="json")
    finally:
        post_save.disconnect(sender=AuditEvent, dispatch_uid="test-announced")
    assert (r.status_code, r.json()["number"]) == (201, 2)
    version = ModelVersion.objects.select_related("model").get(model__name="churn", number=2)
    event = AuditEvent.objects.get(action="version.registered", subject_id=str(version.pk))
    [seen] = announced  # with the links and the time the database assigned
    assert (seen.seq, seen.at, seen.prev_hash, seen.hash) == (event.seq, event.at, event.prev_hash, event.hash)
    after = {
        "number": 2,
        "digest": version.digest,
        "artifact_uri": version.artifact_uri,
        "files": len(version.manifest["files"]),
        "metrics": {"auc": 0.9},
        "source": {"commit": "a" * 40},
        "tags": {"api_key": "k-1", "stage": "dev"},
        "run_id": None,
    }
    expected = new_event(action="version.registered", subject=version, actor=personas["owner"].user, after=after)
    fields = ["actor_id", "actor_username", "action", "subject_type", "subject_id", "subject_repr", "before", "after"]
    assert {f: getattr(event, f) for f in fields} == {f: getattr(expected, f) for f in fields}
    assert json.loads(event.after)["tags"] == {"api_key": "[redacted]", "stage": "dev"}
    assert (event.subject_repr, event.token_id) == (
        "acme/churn:2",
        ApiToken.objects.get(user=personas["owner"].user).pk,
    )
    assert event.request_id and event.request_id == r["X-Request-ID"]
    assert event.line == event.export_line()
    assert event.hash == event.computed_hash()
    assert event.prev_hash == AuditEvent.objects.get(seq=event.seq - 1).hash
    call_command("audit_verify", stdout=io.StringIO())


@pytest.mark.parametrize(
    "field",
    [
        '"params": {"k": "\\ud800"}',
        '"metrics": {"\\udc00": 1.0}',
        '"params": {"k": "a\\u0000"}',
        '"params": {"k": 1e400}',
    ],
)
def test_unstorable_values_in_free_form_json_are_400_and_write_nothing(owner, field):
    """params and metrics are free-form JSON: a lone surrogate, a NUL or a number beyond a double (which json.loads
    makes infinite) reached PostgreSQL (a 500) before."""
    body = json.dumps(register_body(s3_manifest(b"lone")))[:-1] + f", {field}}}"
    r = owner.generic("POST", f"{BASE}/versions/", body, content_type="application/json")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_json"), r.content
    assert " holds a " in r.json()["error"]["message"] or "too large for a double" in r.json()["error"]["message"]
    assert not ModelVersion.objects.exists()
    assert not AuditEvent.objects.filter(action="version.registered").exists()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"run_id": True}, "run_id"),  # DRF's UUIDField took it as UUID(int=1)
        ({"run_id": 7}, "run_id"),
        ({"manifest": {"files": [{"path": "w.bin", "size": 2**63, "sha256": "0" * 64}]}}, "size"),
        ({"metrics": {"auc": 10**400}}, "metrics"),  # beyond a double: math.isfinite raised, a 500
        ({"metrics": {"auc": {"value": 10**400}}}, "metrics"),
    ],
)
def test_values_the_schema_does_not_allow_are_400_and_write_nothing(owner, change, field):
    body = {**register_body(s3_manifest(b"strict")), **change}
    r = owner.post(f"{BASE}/versions/", body, format="json")
    assert r.status_code == 400, r.content
    assert field in r.json()["error"]["message"]
    assert not ModelVersion.objects.exists()


@pytest.mark.parametrize(
    ("paths", "phrase"),
    [
        (["weights", "weights/part1"], "path 'weights' is a file and also the folder of other files"),
        (["a/b", "a/b/c/d"], "path 'a/b' is a file and also the folder"),
        (["x" * 256], "a name longer than 255 bytes"),
        (["dir/" + "é" * 128], "a name longer than 255 bytes"),  # 256 bytes in UTF-8
    ],
    ids=["file-and-folder", "nested", "long-name", "long-utf8-name"],
)
def test_a_manifest_no_file_system_could_hold_is_refused(owner, paths, phrase):
    """Such a version could never be copied to a self-hosted release folder."""
    manifest = {"files": [{"path": p, "size": 1, "sha256": f"{i:064x}"} for i, p in enumerate(paths, 1)]}
    r = owner.post(f"{BASE}/versions/", register_body(manifest), format="json")
    assert r.status_code == 400 and phrase in r.json()["error"]["message"], r.json()


def test_a_version_an_alias_points_at_cannot_be_archived(owner):
    """Archived is final and aliases may not point at archived versions: CI resolving the alias would
    otherwise keep shipping it. Move the alias first."""
    for content in (b"1", b"2"):
        owner.post(f"{BASE}/versions/", register_body(s3_manifest(content)), format="json")
    owner.put(f"{BASE}/aliases/champion", {"version": 1}, format="json")
    refused = owner.patch(f"{BASE}/versions/1", {"status": "archived"}, format="json")
    assert refused.status_code == 409, refused.json()
    assert refused.json()["error"]["code"] == "version_in_use" and refused.json()["error"]["detail"] == {
        "aliases": ["champion"]
    }
    assert owner.get(f"{BASE}/versions/1").json()["status"] == "registered"
    owner.put(f"{BASE}/aliases/champion", {"version": 2}, format="json")
    assert owner.patch(f"{BASE}/versions/1", {"status": "archived"}, format="json").status_code == 200
