"""Model signatures: bundles made by the real OpenSSF model_signing library with an EC key, verified by the API."""

import base64
import copy
import hashlib
import json
from pathlib import Path

import model_signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.db import connection, transaction
from django.db.utils import DatabaseError

from audit.models import AuditEvent
from registry.models import VersionSignature
from tests.registry.helpers import register_body

BASE = "/api/v1/models/acme/churn"
SIGNATURE = f"{BASE}/versions/1/signature"
FILES = {
    "config.json": b'{"layers": 4}',
    "weights/model.safetensors": b"\x00\x01weights" * 512,
    "tokenizer/vocab.txt": b"a\nb\nc\n",
}


class KeyPair:
    def __init__(self, directory: Path, name: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.private = directory / f"{name}.pem"
        self.public = directory / f"{name}.pub"
        self.private.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public.write_bytes(self.public_pem)
        self.key_id = hashlib.sha256(self.public_pem).hexdigest()


def write_model(directory: Path, files: dict[str, bytes]) -> Path:
    for path, content in files.items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return directory


def manifest_of(directory: Path) -> dict:
    files = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        content = path.read_bytes()
        files.append(
            {
                "path": path.relative_to(directory).as_posix(),
                "size": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
            }
        )
    return {"files": files}


def sign(directory: Path, keys: KeyPair, tmp_path: Path) -> dict:
    """Sign a model directory with the real model_signing library; return the bundle (model.sig) as JSON."""
    signature = tmp_path / f"{directory.name}.sig"
    model_signing.signing.Config().use_elliptic_key_signer(private_key=keys.private).sign(directory, signature)
    return json.loads(signature.read_text())


@pytest.fixture
def trusted(tmp_path, settings):
    keys = KeyPair(tmp_path / "keys", "trusted")
    settings.MODEL_SIGNING_PUBLIC_KEYS = [str(keys.public)]
    return keys


@pytest.fixture
def model_dir(tmp_path):
    return write_model(tmp_path / "model", FILES)


@pytest.fixture
def owner(personas, model_dir):
    client = personas["owner"].client()
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    r = client.post(f"{BASE}/versions/", register_body(manifest_of(model_dir)), format="json")
    assert r.status_code == 201, r.json()
    return client


def attach(client, bundle):
    return client.post(SIGNATURE, bundle, format="json")


def test_signature_by_trusted_key_over_the_same_files_verifies(owner, trusted, model_dir, tmp_path):
    bundle = sign(model_dir, trusted, tmp_path)
    assert owner.get(SIGNATURE).status_code == 404
    r = attach(owner, bundle)
    assert r.status_code == 201, r.json()
    body = r.json()
    assert body["verified"] is True, body
    assert body["key_id"] == trusted.key_id
    assert body["files_checked"] == len(FILES)
    assert body["problems"] == {"mismatched": [], "missing": [], "extra": []}
    assert body["created_at"] and "reason" in body
    got = owner.get(SIGNATURE)
    assert got.status_code == 200 and got.json() == body
    stored = VersionSignature.objects.get()
    assert stored.bundle == bundle and stored.version.number == 1


def test_changed_file_is_recorded_unverified_naming_the_file(owner, trusted, model_dir, tmp_path):
    changed = write_model(tmp_path / "changed", {**FILES, "weights/model.safetensors": b"poisoned weights"})
    r = attach(owner, sign(changed, trusted, tmp_path))
    assert r.status_code == 201
    body = r.json()
    assert body["verified"] is False
    assert "weights/model.safetensors" in body["reason"]
    assert body["problems"]["mismatched"] == ["weights/model.safetensors"]
    assert body["key_id"] == trusted.key_id  # the signature itself is valid; the files differ
    assert owner.get(SIGNATURE).json()["verified"] is False


def test_missing_and_unsigned_files_are_named(owner, trusted, tmp_path):
    other = {k: v for k, v in FILES.items() if k != "config.json"} | {"extra.bin": b"not in the version"}
    body = attach(owner, sign(write_model(tmp_path / "other", other), trusted, tmp_path)).json()
    assert body["verified"] is False
    assert body["problems"] == {"mismatched": [], "missing": ["extra.bin"], "extra": ["config.json"]}
    assert "extra.bin" in body["reason"] and "config.json" in body["reason"]


def test_untrusted_key_is_recorded_unverified(owner, trusted, model_dir, tmp_path):
    stranger = KeyPair(tmp_path / "keys", "stranger")
    r = attach(owner, sign(model_dir, stranger, tmp_path))
    assert r.status_code == 201
    body = r.json()
    assert body["verified"] is False and body["key_id"] == ""
    assert "does not trust" in body["reason"]
    # Without the key hint the registry tries every trusted key; none verifies.
    bundle = sign(model_dir, stranger, tmp_path)
    del bundle["verificationMaterial"]["publicKey"]["hint"]
    body = attach(owner, bundle).json()
    assert body["verified"] is False and "does not verify" in body["reason"]


def test_tampered_statement_does_not_verify(owner, trusted, model_dir, tmp_path):
    bundle = sign(model_dir, trusted, tmp_path)
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    body = attach(owner, bundle).json()
    assert body["verified"] is False and "does not verify" in body["reason"]


def test_the_latest_bundle_again_is_that_record_unless_judged_otherwise(owner, trusted, model_dir, tmp_path, settings):
    """A CI job's retry after a lost answer stored a second record and audit event; the same bundle judged anew
    (the trusted keys changed) is a new fact, recorded."""
    bundle = sign(model_dir, trusted, tmp_path)
    first = attach(owner, bundle)
    events = AuditEvent.objects.count()
    again = attach(owner, bundle)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert VersionSignature.objects.count() == 1 and AuditEvent.objects.count() == events
    settings.MODEL_SIGNING_PUBLIC_KEYS = []
    rejudged = attach(owner, bundle)
    assert rejudged.status_code == 201 and rejudged.json()["verified"] is False
    assert VersionSignature.objects.count() == 2


def test_second_key_in_the_list_is_used(owner, trusted, model_dir, tmp_path, settings):
    second = KeyPair(tmp_path / "keys", "second")
    settings.MODEL_SIGNING_PUBLIC_KEYS = [str(trusted.public), str(second.public)]
    body = attach(owner, sign(model_dir, second, tmp_path)).json()
    assert body["verified"] is True and body["key_id"] == second.key_id


def test_no_trusted_keys_configured_is_recorded_unverified(owner, trusted, model_dir, tmp_path, settings):
    bundle = sign(model_dir, trusted, tmp_path)
    settings.MODEL_SIGNING_PUBLIC_KEYS = []
    body = attach(owner, bundle).json()
    assert body["verified"] is False and "MODEL_SIGNING_PUBLIC_KEYS" in body["reason"]


def _malformed_bundles(good: dict) -> dict[str, object]:
    def changed(fn):
        bundle = copy.deepcopy(good)
        fn(bundle)
        return bundle

    def set_statement(bundle, fn):
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        fn(statement)
        bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()

    return {
        "not an object": ["a", "list"],
        "empty object": {},
        "wrong media type": changed(lambda b: b.update(mediaType="application/json")),
        "no envelope": changed(lambda b: b.pop("dsseEnvelope")),
        "payload not base64": changed(lambda b: b["dsseEnvelope"].update(payload="%%% not base64 %%%")),
        "payload not json": changed(lambda b: b["dsseEnvelope"].update(payload=base64.b64encode(b"nope").decode())),
        "no signatures": changed(lambda b: b["dsseEnvelope"].update(signatures=[])),
        "wrong payload type": changed(lambda b: b["dsseEnvelope"].update(payloadType="text/plain")),
        "keyless certificate": changed(
            lambda b: b.update(verificationMaterial={"certificate": {"rawBytes": "AAAA"}, "tlogEntries": []})
        ),
        "sharded serialization": changed(
            lambda b: set_statement(b, lambda s: s["predicate"]["serialization"].update(method="shards"))
        ),
        "bad resource digest": changed(
            lambda b: set_statement(b, lambda s: s["predicate"]["resources"][0].update(digest="xyz"))
        ),
        "payload nested too deep to parse": changed(
            lambda b: b["dsseEnvelope"].update(payload=base64.b64encode(b"[" * 100_000 + b"]" * 100_000).decode())
        ),
    }


def test_malformed_bundles_are_400_and_nothing_is_stored(owner, trusted, model_dir, tmp_path):
    good = sign(model_dir, trusted, tmp_path)
    events = AuditEvent.objects.count()
    for label, bundle in _malformed_bundles(good).items():
        r = attach(owner, bundle)
        assert r.status_code == 400, (label, r.json())
        error = r.json()["error"]
        assert error["code"] in ("malformed_bundle", "unsupported_signature"), (label, error)
        assert error["message"].startswith("Signature bundle: "), (label, error)
        assert error["detail"], label  # names the part of the bundle at fault
    assert VersionSignature.objects.count() == 0
    assert AuditEvent.objects.count() == events
    assert owner.get(SIGNATURE).status_code == 404


def test_a_deeply_nested_extra_field_is_no_500(owner, trusted, model_dir, tmp_path):
    """As deep as the request parser takes: the bundle's normalization copied it whole and ran out of stack."""
    bundle = sign(model_dir, trusted, tmp_path)
    bundle["x"] = json.loads("[" * 850 + "]" * 850)
    r = owner.post(SIGNATURE, json.dumps(bundle), content_type="application/json")
    assert r.status_code in (201, 400), r.content[:300]


def test_keyless_bundle_is_named_unsupported(owner, trusted, model_dir, tmp_path):
    bundle = sign(model_dir, trusted, tmp_path)
    bundle["verificationMaterial"] = {"certificate": {"rawBytes": "AAAA"}, "tlogEntries": []}
    error = attach(owner, bundle).json()["error"]
    assert error["code"] == "unsupported_signature" and "keyless" in error["message"]


def test_each_attach_writes_exactly_one_audit_event_without_the_bundle(owner, trusted, model_dir, tmp_path):
    bundle = sign(model_dir, trusted, tmp_path)
    for expected in (True, False):
        before = AuditEvent.objects.count()
        if not expected:
            bundle = sign(write_model(tmp_path / "v2", {**FILES, "config.json": b"{}"}), trusted, tmp_path)
        assert attach(owner, bundle).status_code == 201
        events = list(AuditEvent.objects.order_by("seq")[before:])
        assert [e.action for e in events] == ["version.signature_attached"]
        after = json.loads(events[0].after)
        assert after["verified"] is expected and after["version"] == 1 and after["model"] == "acme/churn"
        assert after["reason"] and after["files_checked"] == len(FILES)
        digest = hashlib.sha256(
            json.dumps(bundle, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
        assert after["bundle_sha256"] == digest
        assert bundle["dsseEnvelope"]["payload"] not in events[0].after
        assert bundle["dsseEnvelope"]["signatures"][0]["sig"] not in events[0].after
    assert VersionSignature.objects.count() == 2
    assert owner.get(SIGNATURE).json()["verified"] is False  # the latest wins


def test_signatures_are_append_only(owner, trusted, model_dir, tmp_path):
    assert attach(owner, sign(model_dir, trusted, tmp_path)).status_code == 201
    for sql in (
        "UPDATE registry_versionsignature SET verified = NOT verified",
        "UPDATE registry_versionsignature SET reason = 'fine'",
        "DELETE FROM registry_versionsignature",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cur:
            cur.execute(sql)
    assert VersionSignature.objects.get().verified is True


def test_permissions(owner, personas, trusted, model_dir, tmp_path):
    bundle = sign(model_dir, trusted, tmp_path)
    reviewer, outsider = personas["reviewer"].client(), personas["outsider"].client()
    assert attach(reviewer, bundle).status_code == 403
    assert attach(outsider, bundle).status_code == 404
    assert outsider.get(SIGNATURE).status_code == 404
    assert VersionSignature.objects.count() == 0
    assert attach(owner, bundle).status_code == 201
    assert reviewer.get(SIGNATURE).status_code == 200  # readers see the verdict
    r = outsider.get(SIGNATURE)
    assert r.status_code == 404 and "acme/churn" not in r.content.decode()
    assert owner.post(f"{BASE}/versions/9/signature", bundle, format="json").status_code == 404


def test_scope_versions_write_is_required(owner, personas, trusted, model_dir, tmp_path, make_token):
    from tests.conftest import bearer

    read_only = bearer(make_token(personas["owner"].user, ["read"]))
    assert attach(read_only, sign(model_dir, trusted, tmp_path)).status_code == 403
    assert read_only.get(SIGNATURE).status_code == 404  # nothing attached, but the read is allowed
