"""The secret scanner itself (tests/secret_scan.py) finds planted leaks of real tokens and credentials.

These tests plant leaks on purpose, so they carry `plants_secrets` (the session scan ignores them)
and check a scanner of their own, fed by the same hooks.
"""

import logging
import tempfile
from pathlib import Path

import pytest

from accounts import scopes
from accounts import services as account_services
from audit.services import record
from tests import secret_scan

pytestmark = pytest.mark.plants_secrets


@pytest.fixture
def scanner(secret_scanner):
    own = secret_scan.SecretScanner()
    secret_scan.ACTIVE.append(own)
    yield own
    secret_scan.ACTIVE.remove(own)


def test_a_token_in_a_log_record_is_found(scanner, personas):
    token = account_services.token_create(actor="test", user=personas["owner"].user, name="t", scopes=[scopes.READ])
    logging.getLogger("registry.leaky").warning("calling the registry with %s", token.plaintext)
    found = scanner.flush("planted")
    assert [f.where for f in found] == ["log record (registry.leaky) during planted"] * 2  # whole and secret part
    assert token.plaintext not in str(found[0]) and "<secret>" in str(found[0])


def test_a_credential_in_an_audit_event_is_found(scanner, personas, monkeypatch):
    """The audit log masks API tokens and webhook secrets it is handed (audit.services.redact): a host
    credential it cannot recognise is what can still leak into an event, and the scanner finds it."""
    token = account_services.token_create(actor="test", user=personas["owner"].user, name="t", scopes=[scopes.READ])
    scanner.flush()  # the token.created event itself names only the prefix
    assert scanner.findings == []
    record(action="model.updated", subject=personas["owner"].user, actor="test", reason=f"rotated {token.plaintext}")
    assert scanner.flush() == []  # masked before it was written
    monkeypatch.setenv("PLANTED_AUDIT_TOKEN", "r8_plantedAuditCredential0123")
    body = {"name": "rep", "kind": "self_hosted", "stage": "prod", "config": {"backend": "rep"}}
    body["credentials_ref"] = "env:PLANTED_AUDIT_TOKEN"
    assert personas["admin"].client().post("/api/v1/targets/", body, format="json").status_code == 201
    scanner.flush()
    record(action="model.updated", subject=personas["owner"].user, actor="test", reason="r8_plantedAuditCredential0123")
    assert any(f.where.startswith("audit event model.updated") for f in scanner.flush())


def test_a_token_in_an_api_response_is_found_but_not_in_its_creation_response(scanner, personas):
    owner = personas["owner"].client()
    created = owner.post("/api/v1/tokens/", {"name": "ci", "scopes": ["read"]}, format="json")
    assert created.status_code == 201
    assert scanner.flush() == []  # shown once, on purpose
    leaked = created.json()["token"]
    assert owner.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    r = owner.patch("/api/v1/models/acme/churn", {"description": f"token: {leaked}"}, format="json")
    assert r.status_code == 200
    found = scanner.flush()
    assert any(f.where.startswith("API response PATCH /api/v1/models/acme/churn 200") for f in found), found


def test_a_host_credential_named_by_a_target_is_found_in_a_log_file(scanner, personas, monkeypatch):
    monkeypatch.setenv("PLANTED_HOST_TOKEN", "r8_plantedCredentialValue0123")
    admin = personas["admin"].client()
    body = {
        "name": "rep",
        "kind": "self_hosted",
        "stage": "prod",
        "config": {"backend": "rep"},
        "credentials_ref": "env:PLANTED_HOST_TOKEN",
    }
    assert admin.post("/api/v1/targets/", body, format="json").status_code == 201
    with tempfile.TemporaryDirectory() as planted:  # outside pytest's basetemp, which the session scan reads
        logs = Path(planted)
        (logs / "worker.log").write_text("deploying with r8_plantedCredentialValue0123\n")
        (logs / "clean.log").write_text("deploying with env:PLANTED_HOST_TOKEN\n")
        found = scanner.scan_files([logs])
    assert [f.where for f in found] == [f"log file {logs / 'worker.log'}"]


def test_the_session_verdict_fails_on_a_finding(scanner):
    scanner.add_secret("mgr_0123456789ab_" + "s" * 43, "API token")
    scanner.capture("API response GET /api/v1/x 200", "... mgr_0123456789ab_" + "s" * 43, "responses")
    scanner.flush("planted")
    with pytest.raises(AssertionError, match="2 leaks of API tokens") as failure:
        secret_scan.verdict(scanner)
    assert "s" * 43 not in str(failure.value)  # the report names the leak, not the secret
    secret_scan.verdict(secret_scan.SecretScanner())  # nothing found: passes


def test_the_index_finds_a_secret_inside_a_longer_word_and_one_of_any_characters():
    """scan_text looks word-character secrets up by length in the runs of such characters (a secret may sit
    inside a longer run) and searches for the others one by one; each is reported once, at its first place."""
    own = secret_scan.SecretScanner()
    token = "mgr_0123456789ab_" + "Se-cretPart_" * 3
    secret_part = token.split("_", 2)[2]
    own.add_secret(token, "API token")
    own.add_secret("pa$$ word:with/symbols", "host credential (env X)")
    text = f"x{token[1:]}tail, again prefix{secret_part}suffix, and 'pa$$ word:with/symbols'"
    found = own.scan_text("planted", text)
    assert [f.secret_label for f in found] == [
        "API token mgr_0123… (its secret part)",
        "host credential (env X) pa$$ wor…",
    ]
    assert found[0].context.endswith("x" + token[1:17] + "<secret>")
    near_miss = own.scan_text("planted", text.replace(secret_part, secret_part[:-1] + "X"))
    assert [f.secret_label for f in near_miss] == ["host credential (env X) pa$$ wor…"]
    assert own.scan_text("whole", f"({token})")[0].secret_label == "API token mgr_0123…"
    assert own.scan_text("clean", token[:-1] + " pa$$ word") == []
