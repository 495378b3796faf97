"""What a registration may declare: the registry:// URI is the registry's own (this model, this digest), the other
artifact URIs name what their message says, a CI run URL is any http(s) URL with a host, tag keys are bounded. The
server and registry-cli apply the same rules."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from accounts import scopes
from audit.models import AuditEvent
from registry import cli
from registry import manifest as manifests
from registry.models import ModelVersion
from tests.conftest import bearer
from tests.registry.helpers import file_entry, register_body, s3_manifest

BASE = "/api/v1/models/acme/churn"
ROOT = Path(__file__).resolve().parents[2]
PIN = b"pinned bytes!"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MAX_TAG_KEY = 255  # docs/ci.md; registry.cli.MAX_TAG_KEY, which the server uses too


@pytest.fixture
def ci(personas, make_token):
    """A CI token (read, models:write, versions:write) whose bot created acme/churn; the admin owns secret/m,
    which the bot cannot see."""
    client = bearer(make_token(personas["ci_bot"].user, [scopes.READ, scopes.MODELS_WRITE, scopes.VERSIONS_WRITE]))
    assert client.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    admin = personas["admin"].client()
    assert admin.post("/api/v1/models/", {"namespace": "secret", "name": "m"}, format="json").status_code == 201
    assert client.get("/api/v1/models/secret/m").status_code == 404
    return client


@pytest.fixture
def uploaded(ci) -> dict:
    """A manifest whose one file the registry holds for acme/churn, and its digest."""
    sha = hashlib.sha256(PIN).hexdigest()
    put = ci.put(f"{BASE}/artifacts/sha256:{sha}", data=PIN, content_type="application/octet-stream")
    assert put.status_code == 201, put.content
    manifest = {"files": [file_entry("pin.bin", PIN)]}
    return {"manifest": manifest, "digest": manifests.digest(manifests.normalize(manifest))}


def refused(response, field: str, phrase: str) -> None:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert field in error["message"] and phrase in error["message"], error
    assert not ModelVersion.objects.exists()
    assert not AuditEvent.objects.filter(action="version.registered").exists()


# --- F1: registry:// is this model's, at this version's digest ------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "registry://secret/m@main",  # another model, and a branch the managed host would deploy
        "registry://other/model@sha256:deadbeef",
        "registry://acme/churn@main",
        "registry://acme/churn@sha256:" + "0" * 64,  # this model, another digest
        "registry://secret/m@{digest}",  # this digest, another model
        "registry://acme/churn",
        "registry://acme/churn@{digest}/x",
        "registry://ACME/churn@{digest}",
    ],
)
def test_a_registry_uri_that_is_not_this_versions_own_is_refused(ci, uploaded, uri):
    body = {"manifest": uploaded["manifest"], "artifact_uri": uri.format(digest=uploaded["digest"])}
    r = ci.post(f"{BASE}/versions/", body, format="json")
    refused(r, "artifact_uri", 'Send "registry://"')
    assert f"registry://acme/churn@{uploaded['digest']}" in r.json()["error"]["message"]
    assert r.json()["error"]["detail"]["artifact_uri"]


def test_the_registry_uri_may_be_omitted_bare_or_canonical_and_is_stored_canonical(ci, uploaded):
    canonical = f"registry://acme/churn@{uploaded['digest']}"
    statuses = []
    for extra in ({}, {"artifact_uri": ""}, {"artifact_uri": "registry://"}, {"artifact_uri": canonical}):
        r = ci.post(f"{BASE}/versions/", {"manifest": uploaded["manifest"], **extra}, format="json")
        statuses.append(r.status_code)
        assert r.json()["artifact_uri"] == canonical and r.json()["number"] == 1, r.json()
    assert statuses == [201, 200, 200, 200]
    assert list(ModelVersion.objects.values_list("artifact_uri", flat=True)) == [canonical]


# --- F8: s3:// and hf:// name what the message says -------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "phrase"),
    [
        (f"hf://@{COMMIT}", "hf://org/repo@<40-hex commit>"),
        (f"hf://org/@{COMMIT}", "hf://org/repo@<40-hex commit>"),
        (f"hf://org/repo/extra@{COMMIT}", "hf://org/repo@<40-hex commit>"),
        ("hf://org/repo@main", "hf://org/repo@<40-hex commit>"),
        ("s3://bucket", "s3://bucket/prefix"),
        ("s3://bucket/", "s3://bucket/prefix"),
        ("s3://bucket//", "s3://bucket/prefix"),
        ("s3:///prefix", "s3://bucket/prefix"),
        ("s3://bu cket/prefix", "s3://bucket/prefix"),
    ],
)
def test_an_s3_or_hf_uri_missing_a_part_is_refused(ci, uri, phrase):
    refused(
        ci.post(f"{BASE}/versions/", register_body(s3_manifest(b"x"), artifact_uri=uri), format="json"),
        "artifact_uri",
        phrase,
    )


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/prefix",
        "s3://my.bucket-1/a/b/",
        f"hf://org/repo@{COMMIT}",
        f"hf://Org_1/re.po-2@{COMMIT}",
        f"hf://gpt2@{COMMIT}",  # a legacy Hub repository, without an org
    ],
)
def test_complete_s3_and_hf_uris_are_stored_as_sent(ci, uri):
    r = ci.post(f"{BASE}/versions/", register_body(s3_manifest(b"x"), artifact_uri=uri), format="json")
    assert r.status_code == 201 and r.json()["artifact_uri"] == uri, r.content


# --- credentials in the source: kept in audit events and shown to every reader --------------------------------


@pytest.mark.parametrize(
    ("source", "phrase"),
    [
        ({"repository": "https://gitlab-ci-token:glcbt-64_x1@gitlab.example.com/acme/churn.git"}, "user:password@"),
        ({"repository": "https://ghp_x1@github.com/acme/churn.git"}, "user name"),
        ({"ci_run_url": "https://ci.example.com/run/1?token=x1"}, "'token'"),
        ({"ci_run_url": "https://bot:x1@ci.example.com/run/1"}, "user:password@"),
    ],
)
def test_a_credential_in_the_source_is_refused(ci, source, phrase):
    refused(
        ci.post(f"{BASE}/versions/", register_body(s3_manifest(b"x"), source=source), format="json"),
        next(iter(source)),
        phrase,
    )


@pytest.mark.parametrize(
    ("uri", "phrase"),
    [
        ("s3://AKIAEXAMPLE:x1@bucket/models/churn", "user:password@"),
        ("s3://bucket/models/churn?X-Amz-Credential=AKIA&X-Amz-Signature=x1", "'X-Amz-Credential'"),
    ],
)
def test_a_credential_in_the_artifact_uri_is_refused(ci, uri, phrase):
    """The artifact URI is kept in the immutable version and shown to every reader: no key or presigned URL in it."""
    refused(
        ci.post(f"{BASE}/versions/", register_body(s3_manifest(b"x"), artifact_uri=uri), format="json"),
        "artifact_uri",
        phrase,
    )
    assert not ModelVersion.objects.exists()


def test_ssh_and_plain_https_sources_are_taken(ci):
    source = {"repository": "git@github.com:acme/churn.git", "ci_run_url": "https://ci.example.com/run/1?attempt=2"}
    r = ci.post(f"{BASE}/versions/", register_body(s3_manifest(b"x"), source=source), format="json")
    assert r.status_code == 201 and r.json()["source"] == source, r.content


# --- F8: tag keys ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["k" * (MAX_TAG_KEY + 1), "k" * 3000, ""])
def test_a_tag_key_outside_the_limit_is_refused_on_register_and_patch(ci, key):
    body = register_body(s3_manifest(b"x"), tags={"team": "growth", key: "v"})
    refused(ci.post(f"{BASE}/versions/", body, format="json"), "tags", f"1 to {MAX_TAG_KEY} characters")
    assert ci.post(f"{BASE}/versions/", register_body(s3_manifest(b"x")), format="json").status_code == 201
    patch = ci.patch(f"{BASE}/versions/1", {"tags": {key: "v"}}, format="json")
    assert patch.status_code == 400 and f"1 to {MAX_TAG_KEY} characters" in patch.json()["error"]["message"]
    assert ModelVersion.objects.get().tags == {}


def test_a_tag_key_at_the_limit_is_kept_and_stored_long_keys_stay_readable(ci):
    key = "k" * MAX_TAG_KEY
    r = ci.post(f"{BASE}/versions/", register_body(s3_manifest(b"x"), tags={key: "v"}), format="json")
    assert r.status_code == 201 and r.json()["tags"] == {key: "v"}, r.content
    # A key stored before the limit existed is data, not input: it reads back, and a status change keeps it.
    ModelVersion.objects.filter(number=1).update(tags={"k" * 3000: "old"})  # tags are mutable
    assert ci.get(f"{BASE}/versions/1").json()["tags"] == {"k" * 3000: "old"}
    deprecated = ci.patch(f"{BASE}/versions/1", {"status": "deprecated"}, format="json")
    assert deprecated.status_code == 200 and deprecated.json()["tags"] == {"k" * 3000: "old"}, deprecated.content


# --- F6: a CI run URL is any absolute http(s) URL with a host ---------------------------------------------------

GOOD_URLS = [
    "http://jenkins:8080/job/train/42/",
    "https://build_agent.corp.example/runs/7",
    "http://10.0.0.5/x",
    "http://[::1]:8080/x",
    "https://github.com/acme/churn-model/actions/runs/4242",
]
BAD_URLS = ["ftp://ci/1", "http://", "http:///job/1", "jenkins:8080/job", "/job/1", "http://ci/a b", "http://ci:port/"]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_ci_hosts_real_ci_systems_use_are_accepted(ci, url):
    r = ci.post(f"{BASE}/versions/", register_body(s3_manifest(b"x"), source={"ci_run_url": url}), format="json")
    assert r.status_code == 201 and r.json()["source"] == {"ci_run_url": url}, r.content
    assert cli.http_url_problem(url) is None


@pytest.mark.parametrize("url", [*BAD_URLS, "http://ci/" + "x" * 1000])
def test_what_is_no_http_url_with_a_host_is_refused_by_server_and_cli(ci, url):
    body = register_body(s3_manifest(b"x"), source={"ci_run_url": url})
    refused(ci.post(f"{BASE}/versions/", body, format="json"), "source.ci_run_url", "")
    assert cli.http_url_problem(url)


def test_the_cli_takes_the_urls_the_server_takes():
    parser = cli.build_parser()
    for url in GOOD_URLS:
        args = parser.parse_args(["register", "--model", "a/b", "--path", ".", "--ci-run-url", url])
        assert cli.source_from(args, {}) == {"ci_run_url": url}
    for url in BAD_URLS:
        args = parser.parse_args(["register", "--model", "a/b", "--path", ".", "--ci-run-url", url])
        with pytest.raises(cli.UsageError, match="CI run URL"):
            cli.source_from(args, {})


# --- the CLI checks locally what the server would refuse --------------------------------------------------------


def run_cli(*args, url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "GITLAB_", "CI_", "REGISTRY_"))}
    env.update(REGISTRY_URL=url, REGISTRY_TOKEN="mgr_not_used")
    return subprocess.run(
        [sys.executable, "-m", "registry.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--artifact-uri", "registry://secret/m@main"), "--artifact-uri 'registry://secret/m@main'"),
        (("--artifact-uri", "registry://acme/churn@sha256:" + "0" * 64), "registry://acme/churn@sha256:"),
        (("--tag", "k" * (MAX_TAG_KEY + 1) + "=v"), f"1 to {MAX_TAG_KEY} characters"),
        (("--ci-run-url", "http://"), "CI run URL 'http://'"),
    ],
)
def test_the_cli_refuses_before_any_request(dead_url, tmp_path, args, message):
    (tmp_path / "pin.bin").write_bytes(PIN)
    result = run_cli("register", "--model", "acme/churn", "--path", str(tmp_path), *args, url=dead_url)
    assert result.returncode == 2, result.stderr  # 3 would mean it tried the network
    assert message in result.stderr
