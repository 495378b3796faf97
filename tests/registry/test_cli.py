"""registry-cli end to end: the CLI runs as a subprocess against a live server over real HTTP."""

import hashlib
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.urls import Resolver404, resolve

from accounts import scopes
from registry import cli
from registry import manifest as manifests
from registry.models import Alias, ModelVersion, RegisteredModel
from registry.storage import blob_store

ROOT = Path(__file__).resolve().parents[2]
CI_TOKEN_SCOPES = [scopes.READ, scopes.MODELS_WRITE, scopes.VERSIONS_WRITE]
CI_PREFIXES = ("GITHUB_", "GITLAB_", "CI_", "REGISTRY_")
FAKE_GITHUB = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
    "GITHUB_REPOSITORY": "acme/churn-model",
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_REF_NAME": "main",
    "GITHUB_RUN_ID": "4242",
}


def run(*args, url=None, token=None, extra_env=None, timeout=60):
    """Run the CLI in a fresh interpreter with a clean CI environment; return the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CI_PREFIXES)}
    if url is not None:
        env["REGISTRY_URL"] = url
    if token is not None:
        env["REGISTRY_TOKEN"] = token
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "registry.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def summary(result) -> dict:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


@pytest.fixture
def model_dir(tmp_path) -> Path:
    d = tmp_path / "model"
    (d / "weights").mkdir(parents=True)
    (d / "weights" / "shard-00001.bin").write_bytes(os.urandom(3 * cli.CHUNK + 17))  # several chunks
    (d / "weights" / "shard-00002.bin").write_bytes(b"\x00" * 1000)
    (d / "config.json").write_text('{"layers": 2}')
    (d / ".gitattributes").write_text("*.bin filter=lfs\n")
    (d / "empty.txt").write_bytes(b"")
    (d / "same-as-config.json").write_text('{"layers": 2}')  # same content, stored once
    (d / "config-link.json").symlink_to("config.json")  # inside the tree: included
    outside = tmp_path / "secret.txt"
    outside.write_text("not part of the model")
    (d / "leak.txt").symlink_to(outside)  # outside the tree: skipped
    return d


@pytest.fixture
def ci(personas, make_token):
    """The ci-bot persona with the token CI gets: read, models:write, versions:write."""
    return make_token(personas["ci_bot"].user, CI_TOKEN_SCOPES)


live = pytest.mark.django_db(transaction=True)  # the live server thread must see committed rows


@live
def test_register_creates_model_uploads_and_prints_summary(live_server, ci, model_dir, artifact_root):
    result = run(
        "register",
        "--model",
        "acme/churn",
        "--path",
        str(model_dir),
        "--create-model",
        "--tag",
        "team=growth",
        url=live_server.url,
        token=ci,
        extra_env=FAKE_GITHUB,
    )
    out = summary(result)
    version = ModelVersion.objects.get()
    assert out == {"model": "acme/churn", "number": 1, "digest": version.digest, "created": True}
    assert "skipping leak.txt" in result.stderr and "outside" in result.stderr
    assert ci not in result.stderr + result.stdout

    paths = [f["path"] for f in version.manifest["files"]]
    assert paths == [
        ".gitattributes",
        "config-link.json",
        "config.json",
        "empty.txt",
        "same-as-config.json",
        "weights/shard-00001.bin",
        "weights/shard-00002.bin",
    ]
    assert version.artifact_uri == f"registry://acme/churn@{version.digest}"
    assert version.tags == {"team": "growth"}
    assert version.source == {
        "repository": "https://github.com/acme/churn-model",
        "commit": FAKE_GITHUB["GITHUB_SHA"],
        "branch": "main",
        "ci_run_url": "https://github.com/acme/churn-model/actions/runs/4242",
    }
    assert RegisteredModel.objects.get().created_by.username == "ci_bot"
    # every file's bytes are in the registry's store, byte for byte
    for entry in version.manifest["files"]:
        with blob_store().open(entry["sha256"]) as f:
            assert f.read() == (model_dir / entry["path"]).read_bytes()
    assert "uploading 5 file(s)" in result.stderr  # 7 files, 5 distinct contents


@live
def test_digest_command_equals_server_digest(live_server, ci, model_dir):
    out = summary(
        run(
            "register",
            "--model",
            "acme/churn",
            "--path",
            str(model_dir),
            "--create-model",
            url=live_server.url,
            token=ci,
        )
    )
    local = run("digest", "--path", str(model_dir))
    assert local.returncode == 0, local.stderr
    assert local.stdout.strip() == out["digest"]

    listed = json.loads(run("digest", "--path", str(model_dir), "--manifest").stdout)
    assert listed["digest"] == out["digest"]
    # the server's own rule, recomputed from the manifest the CLI sent, and the stored version
    assert manifests.digest(manifests.normalize({"files": listed["files"]})) == out["digest"]
    assert ModelVersion.objects.get(number=out["number"]).digest == out["digest"]


@live
def test_rerun_is_idempotent_and_uploads_nothing(live_server, ci, model_dir, tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"auc": 0.91, "f1": {"value": 0.8, "dataset": "holdout", "split": "test"}}))
    args = ("register", "--model", "acme/churn", "--path", str(model_dir), "--metrics", str(metrics))
    first = summary(run(*args, "--create-model", url=live_server.url, token=ci, extra_env=FAKE_GITHUB))
    again = run(*args, "--create-model", url=live_server.url, token=ci, extra_env=FAKE_GITHUB)
    second = summary(again)
    assert second == {**first, "created": False}
    assert "already exists" in again.stderr
    assert "uploading" not in again.stderr  # the registry already holds every file
    assert ModelVersion.objects.count() == 1

    # a changed file is a new version; only the changed content is uploaded
    (model_dir / "config.json").write_text('{"layers": 3}')
    changed = run(*args, url=live_server.url, token=ci, extra_env=FAKE_GITHUB)
    third = summary(changed)
    assert "uploading 1 file(s)" in changed.stderr
    assert third["number"] == 2 and third["created"] is True and third["digest"] != first["digest"]


@live
def test_create_model_stops_at_a_name_taken_by_a_model_it_may_not_view(live_server, ci, model_dir, personas):
    """It went on as if the model existed, to a 404 whose remedy was --create-model: now the 409 is the answer."""
    from registry import services

    services.model_create(actor=personas["owner"].user, namespace="acme", name="hidden")
    args = ("register", "--model", "acme/hidden", "--path", str(model_dir), "--create-model")
    result = run(*args, url=live_server.url, token=ci)
    assert result.returncode == 1, result.stderr
    assert "refused: HTTP 409 name_taken: The name acme/hidden is taken by a model you may not view" in result.stderr
    assert "versions" not in result.stderr  # no registration was tried
    assert ModelVersion.objects.count() == 0


@live
def test_same_files_other_metrics_is_refused_with_servers_message(live_server, ci, model_dir, tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"auc": 0.91}')
    args = ("register", "--model", "acme/churn", "--path", str(model_dir), "--metrics", str(metrics))
    summary(run(*args, "--create-model", url=live_server.url, token=ci))
    metrics.write_text('{"auc": 0.5}')
    result = run(*args, url=live_server.url, token=ci)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "409 digest_conflict" in result.stderr
    assert "Versions are immutable" in result.stderr


@live
def test_read_only_token_exits_1_with_servers_message(live_server, personas, make_token, model_dir):
    read_only = make_token(personas["ci_bot"].user, [scopes.READ])
    result = run(
        "register",
        "--model",
        "acme/churn",
        "--path",
        str(model_dir),
        "--create-model",
        url=live_server.url,
        token=read_only,
    )
    assert result.returncode == 1, result.stderr
    assert "403 insufficient_scope" in result.stderr
    assert "This API token lacks the scope 'models:write'" in result.stderr
    assert read_only not in result.stderr
    assert not RegisteredModel.objects.exists()

    # the model exists, the token still cannot register: refused before anything is uploaded
    full = personas["ci_bot"]
    assert (
        full.client().post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    )
    result = run("register", "--model", "acme/churn", "--path", str(model_dir), url=live_server.url, token=read_only)
    assert result.returncode == 1
    assert "lacks the scope 'versions:write'" in result.stderr
    assert "uploading" not in result.stderr
    assert not ModelVersion.objects.exists()


@live
def test_unknown_model_exits_1(live_server, ci, model_dir):
    result = run("register", "--model", "acme/nope", "--path", str(model_dir), url=live_server.url, token=ci)
    assert result.returncode == 1
    assert "404 not_found" in result.stderr


@live
def test_alias_is_set_and_resolves(live_server, ci, model_dir, tmp_path):
    base = ("register", "--model", "acme/churn", "--create-model", "--alias", "candidate")
    one = summary(run(*base, "--path", str(model_dir), url=live_server.url, token=ci))
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.bin").write_bytes(b"v2")
    two = summary(run(*base, "--path", str(other), url=live_server.url, token=ci))
    assert (one["number"], two["number"]) == (1, 2)
    assert Alias.objects.get(name="candidate").version.number == 2

    resolved = run("resolve", "--model", "acme/churn", "--alias", "candidate", url=live_server.url, token=ci)
    assert resolved.returncode == 0, resolved.stderr
    body = json.loads(resolved.stdout)
    assert (body["number"], body["digest"], body["model"]) == (2, two["digest"], "acme/churn")

    missing = run("resolve", "--model", "acme/churn", "--alias", "champion", url=live_server.url, token=ci)
    assert missing.returncode == 1
    assert "404 not_found" in missing.stderr and "no alias 'champion'" in missing.stderr


def _card_endpoint_exists() -> bool:
    try:
        resolve("/api/v1/models/acme/churn/versions/1/card")
    except Resolver404:
        return False
    return True


needs_card_api = pytest.mark.skipif(
    not _card_endpoint_exists(), reason="POST …/versions/{n}/card is not in registry/api/urls.py yet"
)


@live
@needs_card_api
def test_card_is_posted_before_the_alias_moves(live_server, ci, model_dir, tmp_path):
    from registry.models import ModelCardRevision

    card = tmp_path / "README.md"
    card.write_text("---\nlicense: apache-2.0\n---\n# Churn model\n\n## Intended use\n\nPredicts churn.\n")
    args = ("register", "--model", "acme/churn", "--path", str(model_dir), "--card", str(card), "--alias", "candidate")
    result = run(*args, "--create-model", url=live_server.url, token=ci)
    assert summary(result)["number"] == 1
    assert "posted model card" in result.stderr
    revision = ModelCardRevision.objects.get()
    assert revision.version.number == 1
    assert revision.content["metadata"]["license"] == "apache-2.0"
    assert revision.content["intended_use"] == "Predicts churn."
    assert Alias.objects.get(name="candidate").version.number == 1


@live
@needs_card_api
def test_refused_card_exits_1_and_leaves_the_alias_alone(live_server, ci, model_dir, tmp_path):
    card = tmp_path / "README.md"
    card.write_text("   \n")
    result = run(
        "register",
        "--model",
        "acme/churn",
        "--path",
        str(model_dir),
        "--create-model",
        "--card",
        str(card),
        "--alias",
        "candidate",
        url=live_server.url,
        token=ci,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "version 1 (sha256:" in result.stderr and "posting the model card failed" in result.stderr
    assert "400 invalid_card: The README.md body is empty." in result.stderr
    assert ModelVersion.objects.get().number == 1  # the version itself is registered (re-running is safe)
    assert not Alias.objects.exists()


def _read_head(sock) -> bytes | None:
    """What a client sent up to the end of its request's headers (and any of the body that came with it); None
    when it hung up first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


def _serve(handler, servers: list, **attributes) -> str:
    """A threaded TCP server on a free local port with `attributes` set on it, appended to `servers` (which the
    fixture shuts down); its URL."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    for name, value in attributes.items():
        setattr(server, name, value)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers.append(server)
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def lossy_proxy():
    """A proxy on localhost in front of a server; yields start(upstream_url, drop) -> url, and the request lines
    it saw. It forwards every request whole; for the first one whose request line contains `drop`, the server's
    answer is thrown away and the client's connection closed: the request was served, the answer lost."""
    servers, seen, dropped = [], [], []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            data = _read_head(self.request)
            if data is None:
                return
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = next(
                (int(v) for k, _, v in (h.partition(b":") for h in lines[1:]) if k.lower() == b"content-length"), 0
            )
            while len(body) < length:
                chunk = self.request.recv(65536)
                if not chunk:
                    return
                body += chunk
            seen.append(lines[0])
            host, port = self.server.upstream
            with socket.create_connection((host, port), timeout=30) as upstream:
                upstream.sendall(head + b"\r\n\r\n" + body)  # the CLI sends Connection: close
                answer = b""
                while chunk := upstream.recv(65536):
                    answer += chunk
            if self.server.drop in lines[0] and not dropped:
                dropped.append(lines[0])
                return  # hang up without answering
            self.request.sendall(answer)

    def start(upstream_url: str, drop: bytes) -> str:
        host, port = upstream_url.removeprefix("http://").rsplit(":", 1)
        return _serve(Handler, servers, upstream=(host, int(port)), drop=drop)

    yield start, seen
    for server in servers:
        server.shutdown()
        server.server_close()


@live
@needs_card_api
def test_card_post_whose_answer_is_lost_is_retried_without_a_second_revision(
    live_server, ci, model_dir, tmp_path, lossy_proxy
):
    """The card post is idempotent (the same content as the latest revision answers 200 with it), so the CLI
    retries it like any other request when the connection drops after the server stored the revision."""
    from registry.models import ModelCardRevision

    start, seen = lossy_proxy
    url = start(live_server.url, drop=b"/versions/1/card")
    card = tmp_path / "README.md"
    card.write_text("# Churn model\n\n## Intended use\n\nPredicts churn.\n")
    args = ("register", "--model", "acme/churn", "--path", str(model_dir), "--card", str(card), "--alias", "candidate")
    result = run(*args, "--create-model", url=url, token=ci)
    assert summary(result)["number"] == 1
    card_posts = [line for line in seen if line.startswith(b"POST ") and b"/card" in line]
    assert card_posts == [b"POST /api/v1/models/acme/churn/versions/1/card HTTP/1.1"] * 2  # served, lost, retried
    assert "Remote end closed connection" in result.stderr and "retrying in 1s" in result.stderr
    assert "posted model card" in result.stderr
    revision = ModelCardRevision.objects.get()  # the retry added no second revision
    assert (revision.revision, revision.content["intended_use"]) == (1, "Predicts churn.")
    assert Alias.objects.get(name="candidate").version.number == 1


def test_missing_token_exits_2(dead_url, model_dir):
    result = run("register", "--model", "acme/churn", "--path", str(model_dir), url=dead_url)
    assert result.returncode == 2
    assert "REGISTRY_TOKEN is not set" in result.stderr
    assert run("resolve", "--model", "acme/churn", "--alias", "x", url=dead_url).returncode == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "acme"), "must be namespace/name"),
        (("--model", "acme/churn", "--metrics", "missing.json"), "--metrics missing.json"),
        (("--model", "acme/churn", "--tag", "novalue"), "must be key=value"),
        (("--model", "acme/churn", "--source-commit", "not-a-sha"), "7-64 hexadecimal"),
    ],
)
def test_usage_errors_exit_2_before_any_request(dead_url, model_dir, args, message):
    result = run("register", "--path", str(model_dir), *args, url=dead_url, token="mgr_not_used")
    assert result.returncode == 2
    assert message in result.stderr


def test_usage_error_for_argparse_and_empty_dir(tmp_path):
    assert run("register", "--path", str(tmp_path)).returncode == 2  # --model missing
    empty = run("digest", "--path", str(tmp_path))
    assert empty.returncode == 2 and "holds no files" in empty.stderr


def test_network_error_exits_3_with_clear_message(dead_url, model_dir):
    result = run(
        "register",
        "--model",
        "acme/churn",
        "--path",
        str(model_dir),
        "--retries",
        "0",
        url=dead_url,
        token="mgr_not_used",
    )
    assert result.returncode == 3
    assert f"could not reach the registry at {dead_url}" in result.stderr
    assert "mgr_not_used" not in result.stderr


@pytest.fixture
def broken_server():
    """A local HTTP server that answers every request with the given bytes and hangs up; yields
    (start(response) -> url, number of requests received so far)."""
    servers, received = [], []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            data = _read_head(self.request)
            if data is None:
                return
            received.append(data.split(b"\r\n", 1)[0])
            self.request.sendall(self.server.response)

    def start(response: bytes) -> str:
        return _serve(Handler, servers, response=response)

    yield start, received
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("response", "shown"),
    [
        # a 200 whose body stops short of its Content-Length: http.client.IncompleteRead
        (
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"number":',
            "IncompleteRead",
        ),
        # the same for an error answer, read in the HTTPError handler
        (b'HTTP/1.1 400 Bad Request\r\nContent-Length: 100\r\n\r\n{"error":', "IncompleteRead"),
        # not HTTP at all: http.client.BadStatusLine
        (b"garbage\r\n\r\n", "BadStatusLine"),
        # hangs up without answering: RemoteDisconnected (an OSError too)
        (b"", "Remote end closed connection"),
    ],
    ids=["truncated-200", "truncated-400", "bad-status-line", "hang-up"],
)
def test_broken_answer_is_a_network_error_retried_then_exit_3(broken_server, response, shown):
    start, received = broken_server
    url = start(response)
    result = run("resolve", "--model", "acme/churn", "--alias", "candidate", "--retries", "1", url=url, token="mgr_x")
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert shown in result.stderr
    assert "retrying in 1s" in result.stderr
    assert received == [b"GET /api/v1/models/acme/churn/aliases/candidate HTTP/1.1"] * 2  # one retry
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("option", "text", "message"),
    [
        ("--metrics", '{"auc": 1e400}', "holds a number out of range"),  # loads as inf, which JSON cannot carry
        ("--params", '{"lr": "\\ud800"}', "holds a string that is not valid Unicode"),  # a lone surrogate
    ],
    ids=["metrics-1e400", "params-lone-surrogate"],
)
def test_json_that_cannot_be_sent_is_a_usage_error_before_hashing(dead_url, model_dir, tmp_path, option, text, message):
    path = tmp_path / "values.json"
    path.write_text(text)
    result = run(
        "register", "--model", "acme/churn", "--path", str(model_dir), option, str(path), url=dead_url, token="mgr_x"
    )
    assert result.returncode == 2, result.stderr
    assert f"{option} {path} {message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "hashed" not in result.stderr  # checked before any work


def test_text_that_cannot_be_sent_is_a_usage_error(dead_url, model_dir):
    """Arguments that are not UTF-8 reach Python as lone surrogates; a token with a line break would be
    refused by http.client in a traceback that shows it."""
    bad = os.fsdecode(b"\xff")
    base = ("register", "--model", "acme/churn", "--path", str(model_dir))
    for args, message in [
        (("register", "--model", "acme/" + bad, "--path", str(model_dir)), "--model b'acme/\\xff' is not valid UTF-8"),
        ((*base, "--tag", "k=" + bad), "--tag b'k=\\xff' is not valid UTF-8"),
        ((*base, "--alias", bad), "--alias b'\\xff' is not valid UTF-8"),
        ((*base, "--source-branch", bad), "source branch b'\\xff' is not valid UTF-8"),
        (("resolve", "--model", "acme/churn", "--alias", bad), "--alias b'\\xff' is not valid UTF-8"),
    ]:
        result = run(*args, url=dead_url, token="mgr_x")
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    token = "mgr_abc\nsecret"
    result = run(*base, url=dead_url, token=token)
    assert result.returncode == 2 and "REGISTRY_TOKEN holds spaces, line breaks" in result.stderr
    assert "secret" not in result.stderr
    result = run(*base, url="http://127.0.0.1:port", token="mgr_x")
    assert result.returncode == 2 and "has an invalid port" in result.stderr


def test_runs_as_a_script_from_inside_the_checkout(model_dir):
    """registry/selectors.py must not shadow the standard library's selectors when run as registry/cli.py."""
    result = subprocess.run(
        [sys.executable, "registry/cli.py", "digest", "--path", str(model_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == run("digest", "--path", str(model_dir)).stdout.strip()
    assert result.stdout.startswith("sha256:")


def test_source_defaults_from_ci_env():
    args = cli.build_parser().parse_args(["register", "--model", "a/b", "--path", "."])
    assert cli.source_from(args, {}) == {}
    gitlab = {
        "GITLAB_CI": "true",
        "CI_COMMIT_SHA": "ABCDEF0123456789ABCDEF0123456789ABCDEF01",
        "CI_PROJECT_URL": "https://gitlab.com/acme/churn",
        "CI_COMMIT_REF_NAME": "release",
        "CI_PIPELINE_URL": "https://gitlab.com/acme/churn/-/pipelines/7",
    }
    assert cli.source_from(args, gitlab) == {
        "repository": "https://gitlab.com/acme/churn",
        "commit": "abcdef0123456789abcdef0123456789abcdef01",
        "branch": "release",
        "ci_run_url": "https://gitlab.com/acme/churn/-/pipelines/7",
    }
    pr = {**FAKE_GITHUB, "GITHUB_HEAD_REF": "feature/x", "GITHUB_REF_NAME": "12/merge"}
    assert cli.source_from(args, pr)["branch"] == "feature/x"
    explicit = cli.build_parser().parse_args(
        ["register", "--model", "a/b", "--path", ".", "--source-branch", "b", "--ci-run-url", "https://ci/1"]
    )
    got = cli.source_from(explicit, FAKE_GITHUB)
    assert got["branch"] == "b" and got["ci_run_url"] == "https://ci/1" and got["commit"] == FAKE_GITHUB["GITHUB_SHA"]


def test_console_script_is_installed(model_dir):
    script = Path(sys.executable).with_name("registry-cli")
    assert script.exists(), "pip install -e . installs the registry-cli console script"
    result = subprocess.run([str(script), "digest", "--path", str(model_dir)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == run("digest", "--path", str(model_dir)).stdout.strip()


def test_symlink_loop_is_a_usage_error(tmp_path):
    d = tmp_path / "m"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f.bin").write_bytes(b"x")
    (d / "sub" / "loop").symlink_to(d)
    result = run("digest", "--path", str(d))
    assert result.returncode == 2 and "symbolic link loop" in result.stderr


MEASURED = (  # run the CLI, then report this process's peak RSS (VmHWM starts afresh at exec, unlike ru_maxrss)
    "import re, sys\n"
    "from registry.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "sys.stderr.write('MAXRSS_KIB=%s\\n' % re.search(r'VmHWM:\\s+(\\d+)', status)[1])\n"
    "sys.exit(rc)\n"
)


def peak_kib(result) -> int:
    return int(result.stderr.rsplit("MAXRSS_KIB=", 1)[1].split()[0])


@live
def test_large_file_is_hashed_and_uploaded_in_chunks_not_read_into_memory(live_server, ci, tmp_path):
    size = 96 * 1024 * 1024
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    (small / "weights.bin").write_bytes(b"tiny")
    with open(big / "weights.bin", "wb") as f:
        for _ in range(size // cli.CHUNK):
            f.write(os.urandom(1024) * 1024)

    def register(path, model):
        env = {k: v for k, v in os.environ.items() if not k.startswith(CI_PREFIXES)}
        env.update(REGISTRY_URL=live_server.url, REGISTRY_TOKEN=ci)
        args = ["register", "--model", model, "--path", str(path), "--create-model"]
        result = subprocess.run(
            [sys.executable, "-c", MEASURED, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
        return result

    baseline = peak_kib(register(small, "acme/small"))
    result = register(big, "acme/big")
    assert json.loads(result.stdout)["created"] is True
    assert "uploading 1 file(s), 96.0 MiB" in result.stderr
    # hashing and uploading keep a few 1 MiB chunks in memory, never the 96 MiB file
    assert peak_kib(result) - baseline < 24 * 1024, (baseline, peak_kib(result))
    version = ModelVersion.objects.get(model__name="big")
    assert blob_store().size(version.manifest["files"][0]["sha256"]) == size


@live
@pytest.mark.parametrize("change", [b"short", b"longer than it was when hashed"], ids=["shrank", "grew"])
def test_a_file_changed_after_hashing_is_a_usage_error_not_a_timeout(live_server, ci, tmp_path, change, caplog):
    """The upload declares the size hashed; a file that shrank since left the server waiting for the rest until
    the client's timeout, and the CLI blamed the network and retried (15 minutes with the defaults)."""
    path = tmp_path / "weights.bin"
    path.write_bytes(b"the weights as hashed")
    manifest, where = cli.build_manifest(str(tmp_path))
    path.write_bytes(change)
    client = cli.Client(live_server.url, ci, timeout=30, retries=2)
    assert (
        client.request(
            "POST", client.url("models", trailing_slash=True), json_body={"namespace": "acme", "name": "changed"}
        )[0]
        == 201
    )
    started = time.monotonic()
    with pytest.raises(
        cli.UsageError, match=r"weights.bin changed while it was being registered \(21 bytes when hashed"
    ):
        cli.upload(client, "acme", "changed", manifest, where, None, 1, lambda message: None)
    assert time.monotonic() - started < 10

    # The server answers the cut-off (or over-long) upload once the client's socket is gone; the test database
    # is flushed only after that, or the flush and the server's last statements deadlock.
    def answered():
        return any(r.name == "core.access" and r.getMessage().startswith("PUT ") for r in caplog.records)

    deadline = time.monotonic() + 30
    while not answered():
        assert time.monotonic() < deadline, "the server never answered the upload"
        time.sleep(0.05)


@live
def test_a_file_changed_after_hashing_but_not_in_size_exits_2_not_1(live_server, ci, tmp_path, monkeypatch, capsys):
    """The server refuses the changed bytes with 400 digest_mismatch (not the content declared): that is the file
    changing on disk, a local problem (exit 2, as docs/ci.md says), not the registry refusing (exit 1)."""
    path = tmp_path / "weights.bin"
    path.write_bytes(b"the weights as hashed")
    hashed = cli.build_manifest

    def build_manifest_then_change(root, log=None):
        result = hashed(root, log)
        path.write_bytes(b"the weights, modified")  # the same 21 bytes
        return result

    monkeypatch.setattr(cli, "build_manifest", build_manifest_then_change)
    monkeypatch.setenv("REGISTRY_URL", live_server.url)
    monkeypatch.setenv("REGISTRY_TOKEN", ci)
    assert cli.main(["register", "--model", "acme/churn", "--path", str(tmp_path), "--create-model", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"{path} changed while it was being uploaded (same size, other content); run again." in err
    assert not ModelVersion.objects.exists()
    assert blob_store().size(hashlib.sha256(b"the weights as hashed").hexdigest()) is None  # nothing stored
