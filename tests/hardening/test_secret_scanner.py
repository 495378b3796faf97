"""The secret scanner itself (tests/secret_scan.py) finds planted leaks of real tokens and credentials.

These tests plant leaks on purpose, so they carry `plants_secrets` (the session scan ignores them)
and check a scanner of their own, fed by the same hooks.
"""

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from accounts import scopes
from accounts import services as account_services
from audit.services import record
from tests import secret_scan

ROOT = Path(__file__).resolve().parents[2]

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


def test_the_session_verdict_fails_on_a_finding_of_any_process(scanner, tmp_path):
    scanner.add_secret("mgr_0123456789ab_" + "s" * 43, "API token")
    scanner.capture("API response GET /api/v1/x 200", "... mgr_0123456789ab_" + "s" * 43, "responses")
    (tmp_path / "worker.log").write_text("token mgr_0123456789ab_" + "s" * 43)
    leaky = scanner.session_result([tmp_path])
    clean = secret_scan.SecretScanner().session_result([])
    summary, failure = secret_scan.verdict([clean, leaky], expect_traffic=False)
    assert summary.startswith("secret scan: 2 secret values in 2 process(es)")
    assert failure.startswith("4 leaks of API tokens") and "s" * 43 not in failure  # the leak named, not the secret
    assert f"log file {tmp_path / 'worker.log'}" in failure
    assert secret_scan.verdict([clean], expect_traffic=False)[1] == ""
    # the whole suite ran and the scan saw nothing: it checked nothing, which fails too
    assert "checked nothing" in secret_scan.verdict([clean, clean], expect_traffic=True)[1]
    # a worker that ran no test reports nothing found; one that crashed or whose scan failed fails the run
    assert secret_scan.verdict([clean, secret_scan.empty_result()], expect_traffic=False)[1] == ""
    lost = secret_scan.failed_result("worker gw1 sent no scan result (crashed)")
    assert (
        "no verdict possible: worker gw1 sent no scan result"
        in secret_scan.verdict([clean, lost], expect_traffic=False)[1]
    )


LEAKING_TESTS = """
import logging

def test_leaks(secret_scanner):
    secret_scanner.add_secret("r8_" + "plantedLeak" * 3, "host credential (env PLANTED)")
    logging.getLogger("leaky").warning("calling the host with r8_plantedLeakplantedLeakplantedLeak")

def test_clean():
    pass
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist workers"])
def test_a_leak_fails_the_run_after_its_tests_passed(tmp_path, workers):
    """The verdict is the run's, not a test's: a real pytest run (with and without pytest-xdist, whose
    workers each scan their own tests) whose tests all pass exits 1 naming the leak."""
    (tmp_path / "test_planted.py").write_text(LEAKING_TESTS)
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")  # the suite's hooks
    command = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT)]
    command += ["-p", "no:randomly", *workers, "--basetemp", str(tmp_path / "base"), str(tmp_path / "test_planted.py")]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 passed" in run.stdout and "1 leaks of API tokens or host credentials" in run.stdout, run.stdout[-3000:]
    assert "host credential (env PLANTED) r8_plant… found in log record (leaky) during" in run.stdout
    assert "plantedLeakplantedLeak" not in run.stdout
    if not workers:  # the run without the leak passes
        clean = subprocess.run([*command, "-k", "clean"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert clean.returncode == 0 and "secret scan: 0 secret values" in clean.stdout, clean.stdout[-3000:]


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
