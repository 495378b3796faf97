"""registry-cli's exit status follows docs/ci.md ("Exit status") where the review found it did not:

- an upload the server refuses before reading its body (413 over MAX_ARTIFACT_BYTES) is the server's refusal
  (1), not a network error (3): the server answers and hangs up, so sending the rest fails with a broken pipe;
- a 502/503/504 that persists after the retries is "did not answer in time" (3), not a refusal (1);
- a file deleted or unreadable between hashing and upload is a local problem (2), not a network error (3);
- a 2xx that is not the API's JSON (a login page at a wrong URL) is a bad answer (1), not a traceback.
"""

import json
import socket
import socketserver

import pytest

from registry import cli
from tests.registry import test_body_limits_http as body_limits
from tests.registry.test_cli import _read_head, _serve, run

BIG = 32 * 1024 * 1024  # far more than the socket buffers hold: the server hangs up while it is being sent

web = body_limits.web  # gunicorn with MAX_ARTIFACT_BYTES=64 KiB
token = body_limits.token  # a full-scope token, and acme/churn


def http_answer(status: str, body: bytes = b"", content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close"
    return head.encode() + b"\r\n\r\n" + body


def api_error(status: str, code: str, message: str) -> bytes:
    return http_answer(status, json.dumps({"error": {"code": code, "message": message}}).encode())


TOO_LARGE = api_error("413 Request Entity Too Large", "payload_too_large", "This file is too large.")


@pytest.fixture
def fixed_server():
    """Local HTTP servers that read a request's head and answer it from a table, {path prefix: answer bytes}
    (the first prefix that matches; an answer of None hangs up without one), then close the connection with
    whatever body was sent unread, as gunicorn does. Yields (start(table) -> url, request lines received)."""
    servers, received = [], []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            head = _read_head(self.request)
            if head is None:
                return
            line = head.split(b"\r\n", 1)[0]
            received.append(line)
            path = line.split(b" ")[1]
            answer = next(a for prefix, a in self.server.table.items() if path.startswith(prefix))
            if answer is not None:
                self.request.sendall(answer)

    def start(table: dict) -> str:
        return _serve(Handler, servers, table=table)

    yield start, received
    for server in servers:
        server.shutdown()
        server.server_close()


def big_model(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    with open(d / "weights.bin", "wb") as f:
        f.truncate(BIG)  # zeros, sparse: quick to write, and hashed like any file
    return d


def put_all(url: str, directory, retries: int = 0):
    """Upload every file under `directory` to acme/churn with the CLI's own client and upload step."""
    manifest, where = cli.build_manifest(str(directory))
    client = cli.Client(url, "mgr_x", timeout=30, retries=retries)
    cli.upload(client, "acme", "churn", manifest, where, None, 1, lambda message: None)


# --- 1. a refusal that arrives while the body is still being sent ------------------------------------------


def test_a_refusal_before_the_body_is_read_is_the_servers_answer_not_a_broken_pipe(fixed_server, tmp_path):
    start, received = fixed_server
    url = start({b"/": TOO_LARGE})
    with pytest.raises(cli.ServerError) as refused:
        put_all(url, big_model(tmp_path), retries=2)
    assert (refused.value.status, refused.value.code) == (413, "payload_too_large")
    assert "This file is too large." in str(refused.value)
    assert len(received) == 1, "a refusal is not retried (nor the file sent again)"


def test_a_hang_up_without_an_answer_while_sending_stays_a_network_error(fixed_server, tmp_path):
    start, received = fixed_server
    url = start({b"/": None})
    with pytest.raises(cli.NetworkError, match=r"could not reach the registry .*(Broken pipe|Connection reset)"):
        put_all(url, big_model(tmp_path), retries=1)
    assert len(received) == 2  # retried: nothing answered


def test_register_exits_1_when_the_upload_is_refused_early(fixed_server, tmp_path):
    start, received = fixed_server
    missing = api_error("400 Bad Request", "artifacts_missing", "Upload the files first.")
    url = start({b"/api/v1/models/acme/churn/versions/": missing, b"/api/v1/models/acme/churn/artifacts/": TOO_LARGE})
    result = run("register", "--model", "acme/churn", "--path", str(big_model(tmp_path)), url=url, token="mgr_x")
    assert result.returncode == 1, result.stderr
    assert "refused: HTTP 413 payload_too_large: This file is too large." in result.stderr
    assert "Traceback" not in result.stderr and "retrying" not in result.stderr
    assert [line.split(b" ")[0] for line in received] == [b"POST", b"PUT"]


@pytest.mark.slow
def test_gunicorn_refusing_an_upload_over_max_artifact_bytes_is_exit_1_not_3(web, token, tmp_path):
    """The review's reproduction, against the production server: it answers 413 on the declared size and closes
    the connection with the body unread."""
    directory = big_model(tmp_path)
    url = f"http://127.0.0.1:{web.port}"
    result = run("register", "--model", "acme/churn", "--path", str(directory), "--retries", "1", url=url, token=token)
    assert result.returncode == 1, result.stderr
    # the upload's 413 payload_too_large, or registration's 400 too_large where the server checks sizes first
    assert "refused: HTTP 4" in result.stderr and "too_large" in result.stderr
    assert "retrying" not in result.stderr and "could not reach" not in result.stderr

    # The upload itself, whatever registration checks first: the server's refusal, its limit in the detail.
    manifest, where = cli.build_manifest(str(directory))
    client = cli.Client(url, token, timeout=30, retries=1)
    with pytest.raises(cli.ServerError) as refused:
        cli.upload(client, "acme", "churn", manifest, where, None, 1, lambda message: None)
    assert (refused.value.status, refused.value.code) == (413, "payload_too_large")
    assert refused.value.detail == {"limit_bytes": body_limits.ARTIFACT_LIMIT}
    assert body_limits.blobs(web) == []


# --- 2. a gateway error that outlasts the retries -------------------------------------------------------------


@pytest.mark.parametrize(
    "status", ["502 Bad Gateway", "503 Service Unavailable", "504 Gateway Timeout"], ids=["502", "503", "504"]
)
def test_a_gateway_error_after_the_retries_is_a_network_error(fixed_server, status):
    start, received = fixed_server
    url = start({b"/": http_answer(status, b"<html>upstream down</html>", "text/html")})
    result = run("resolve", "--model", "acme/churn", "--alias", "champion", "--retries", "1", url=url, token="mgr_x")
    assert result.returncode == 3, result.stderr
    code = status.split()[0]
    assert f"HTTP {code}; retrying in 1s" in result.stderr
    alias = "GET /api/v1/models/acme/churn/aliases/champion"
    assert f"did not answer in time ({alias}): HTTP {code} http_error" in result.stderr
    assert "upstream down" in result.stderr
    assert "refused" not in result.stderr and "Traceback" not in result.stderr
    assert len(received) == 2


def test_a_gateway_error_names_the_registrys_message_and_a_500_stays_a_refusal(fixed_server):
    start, _ = fixed_server
    unavailable = api_error("503 Service Unavailable", "unavailable", "The registry is restarting.")
    url = start({b"/": unavailable})
    result = run("resolve", "--model", "acme/churn", "--alias", "champion", "--retries", "0", url=url, token="mgr_x")
    assert result.returncode == 3, result.stderr
    assert "HTTP 503 unavailable: The registry is restarting. The command is safe to re-run." in result.stderr

    url = start({b"/": api_error("500 Internal Server Error", "server_error", "Boom.")})
    result = run("resolve", "--model", "acme/churn", "--alias", "champion", url=url, token="mgr_x")
    assert result.returncode == 1, result.stderr
    assert "refused: HTTP 500 server_error: Boom." in result.stderr and "retrying" not in result.stderr


# --- 3. a file gone or unreadable after hashing ---------------------------------------------------------------


def gone(path):
    path.unlink()


def replaced_by_a_directory(path):
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize("change", [gone, replaced_by_a_directory])  # (permissions: CI runs as root, which reads all)
def test_a_file_unreadable_after_hashing_is_a_usage_error_before_any_upload(fixed_server, tmp_path, change):
    start, received = fixed_server
    path = tmp_path / "weights.bin"
    path.write_bytes(b"the weights as hashed")
    manifest, where = cli.build_manifest(str(tmp_path))
    change(path)
    client = cli.Client(start({b"/": TOO_LARGE}), "mgr_x", timeout=30, retries=2)
    with pytest.raises(cli.UsageError, match=r"cannot read .*weights\.bin.*after it was hashed"):
        cli.upload(client, "acme", "churn", manifest, where, None, 1, lambda message: None)
    assert received == []  # opened before the request


def test_register_exits_2_when_a_file_is_deleted_after_hashing(fixed_server, tmp_path, monkeypatch, capsys):
    start, received = fixed_server
    missing = api_error("400 Bad Request", "artifacts_missing", "Upload the files first.")
    url = start({b"/": missing})
    (tmp_path / "weights.bin").write_bytes(b"the weights as hashed")
    hashed = cli.build_manifest

    def build_manifest_then_delete(root, log=None):
        result = hashed(root, log)
        (tmp_path / "weights.bin").unlink()
        return result

    monkeypatch.setattr(cli, "build_manifest", build_manifest_then_delete)
    monkeypatch.setenv("REGISTRY_URL", url)
    monkeypatch.setenv("REGISTRY_TOKEN", "mgr_x")
    assert cli.main(["register", "--model", "acme/churn", "--path", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "weights.bin" in err and "No such file or directory" in err and "REGISTRY_URL" not in err
    assert [line.split(b" ")[0] for line in received] == [b"POST"]


# --- 4. a 2xx that is not the API's JSON ----------------------------------------------------------------------

LOGIN_PAGE = http_answer("200 OK", b"<html><form>Sign in</form></html>", "text/html")
ALIAS = http_answer("200 OK", json.dumps({"name": "champion", "version": 3, "digest": "sha256:" + "a" * 64}).encode())


@pytest.mark.parametrize(
    "table",
    [
        {b"/": LOGIN_PAGE},
        {b"/api/v1/models/acme/churn/aliases/": ALIAS, b"/": LOGIN_PAGE},
        {b"/api/v1/models/acme/churn/aliases/": ALIAS, b"/": http_answer("200 OK", b"[1, 2]")},
        {b"/": http_answer("200 OK", b'{"name": "champion"}')},
    ],
    ids=["alias-html", "version-html", "version-list", "alias-without-version"],
)
def test_resolve_reports_an_answer_that_is_not_the_apis_json(fixed_server, table):
    start, _ = fixed_server
    result = run("resolve", "--model", "acme/churn", "--alias", "champion", url=start(table), token="mgr_x")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert "refused: HTTP 200 bad_response: the registry's answer" in result.stderr
    assert "REGISTRY_URL" in result.stderr


def test_resolve_prints_the_version_the_alias_names(fixed_server):
    start, received = fixed_server
    version = {"number": 3, "digest": "sha256:" + "a" * 64}
    url = start(
        {b"/api/v1/models/acme/churn/aliases/": ALIAS, b"/": http_answer("200 OK", json.dumps(version).encode())}
    )
    result = run("resolve", "--model", "acme/churn", "--alias", "champion", url=url, token="mgr_x")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == version
    assert received[-1] == b"GET /api/v1/models/acme/churn/versions/3 HTTP/1.1"


def test_the_stub_hangs_up_with_the_body_unread():
    """What the early-refusal tests rely on: closing a socket with unread data resets the connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        client.sendall(b"x" * 1000)
        conn.sendall(b"answer")
        conn.close()
        with client:
            with pytest.raises(OSError):
                for _ in range(100):
                    client.sendall(b"y" * 65536)
            assert client.recv(100) == b"answer"  # what the server sent first is still there to read
