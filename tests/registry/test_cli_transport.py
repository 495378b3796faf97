"""registry-cli's transport, where the review found the exit status or the advice wrong:

- a TLS failure that only configuration cures (a certificate signed by a private CA, https:// for a plain-HTTP port)
  is a usage error (2) saying what to set, not a network error (3, "retry the job"); REQUESTS_CA_BUNDLE, which CI
  runners set for `requests`, is trusted as well as SSL_CERT_FILE;
- 408 and 429 are "not now" answers, retried (honouring a numeric Retry-After up to 60 s) and then a
  network error (3), not a refusal (1);
- a --url, --timeout or --retries that cannot work is a usage error (2), not a traceback or a network error.

Each runs the CLI as a subprocess against a real local server (HTTP, or HTTPS with a certificate made here)."""

import datetime
import ipaddress
import json
import socketserver
import ssl
import time

import pytest

from tests.registry.test_cli import _read_head, _serve, run
from tests.registry.test_cli_exit_codes import ALIAS, api_error, http_answer

VERSION = {"number": 3, "digest": "sha256:" + "a" * 64}
RESOLVED = {b"/api/v1/models/acme/churn/aliases/": ALIAS, b"/": http_answer("200 OK", json.dumps(VERSION).encode())}
RESOLVE = ("resolve", "--model", "acme/churn", "--alias", "champion")


@pytest.fixture(autouse=True)
def no_ca_variables(monkeypatch):
    """The CLI's environment starts without the runner's CA settings (run() copies os.environ)."""
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, as a private CA's would look to a client: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def servers():
    """Starts local servers (each a handler class plus attributes, see test_cli._serve) and shuts them down."""
    started = []

    def start(handler, **attributes) -> str:
        return _serve(handler, started, **attributes)

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


class Answers(socketserver.BaseRequestHandler):
    """Reads a request's head (through TLS when the server has a `tls` context) and answers from the server's
    `script` (answers for the first requests, in order) then its `table` ({path prefix: answer}); records the
    request lines in `received`."""

    def handle(self):
        sock = self.request
        tls = getattr(self.server, "tls", None)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError):  # the client refused the certificate
                return
        head = _read_head(sock)
        if head is None:
            return
        line = head.split(b"\r\n", 1)[0]
        self.server.received.append(line)
        script = self.server.script
        if script:
            answer = script.pop(0)
        else:
            path = line.split(b" ")[1]
            answer = next(a for prefix, a in self.server.table.items() if path.startswith(prefix))
        sock.sendall(answer)


def answering(start, table=RESOLVED, script=(), tls=None) -> tuple:
    """(url, request lines received) of a server answering with Answers."""
    received = []
    url = start(Answers, table=table, script=list(script), tls=tls, received=received)
    return url, received


# --- TLS ---------------------------------------------------------------------------------------------------


@pytest.fixture
def https_registry(servers, certificate):
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    url, received = answering(servers, tls=context)
    return url.replace("http://", "https://"), received


def test_a_certificate_from_a_private_ca_is_a_usage_error_saying_what_to_set(https_registry):
    url, received = https_registry
    result = run(*RESOLVE, url=url, token="mgr_x")
    assert result.returncode == 2, result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert "set SSL_CERT_FILE (or REQUESTS_CA_BUNDLE) to your CA bundle" in result.stderr
    assert "retrying" not in result.stderr and "Traceback" not in result.stderr and result.stdout == ""
    assert received == []


def test_the_ca_bundle_requests_ca_bundle_names_is_trusted(https_registry, certificate):
    """CI runners behind a private CA commonly set it for `requests` (Python's ssl reads SSL_CERT_FILE itself)."""
    url, received = https_registry
    result = run(*RESOLVE, url=url, token="mgr_x", extra_env={"REQUESTS_CA_BUNDLE": str(certificate[0])})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == VERSION
    assert received[-1] == b"GET /api/v1/models/acme/churn/versions/3 HTTP/1.1"


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
@pytest.mark.parametrize("bundle", ["missing.pem", "not-pem.txt"])
def test_a_ca_bundle_that_cannot_be_loaded_is_a_usage_error_naming_it(https_registry, tmp_path, variable, bundle):
    """OpenSSL skips an SSL_CERT_FILE it cannot load without a word; the CLI names it before any request."""
    url, received = https_registry
    (tmp_path / "not-pem.txt").write_text("not a certificate\n")
    result = run(*RESOLVE, url=url, token="mgr_x", extra_env={variable: str(tmp_path / bundle)})
    assert result.returncode == 2, result.stderr
    assert f"{variable}={tmp_path / bundle}: cannot load CA certificates from it" in result.stderr
    assert "Traceback" not in result.stderr and received == []


@pytest.mark.parametrize("jobs", ["0", "-2", "many"])
def test_register_needs_at_least_one_upload_job(servers, tmp_path, jobs):
    """--jobs 0 or less ran one upload at a time, as if 1 were given; now it says so."""
    url, received = answering(servers)
    (tmp_path / "model.bin").write_bytes(b"weights")
    result = run("register", "--model", "acme/churn", "--path", str(tmp_path), "--jobs", jobs, url=url, token="mgr_x")
    assert result.returncode == 2, result.stderr
    assert "argument --jobs:" in result.stderr and "Traceback" not in result.stderr and received == []


class PlainHTTP(socketserver.BaseRequestHandler):
    """A plain-HTTP server's answer to a TLS hello (a 400), sent at once: a server waiting for a request's end would
    wait for good, as a TLS hello has none."""

    def handle(self):
        self.server.connections.append(1)
        self.request.sendall(http_answer("400 Bad Request", b"plain HTTP here"))


def test_https_for_a_plain_http_port_is_a_usage_error_not_retried(servers):
    connections = []
    url = servers(PlainHTTP, connections=connections)
    result = run(*RESOLVE, url=url.replace("http://", "https://"), token="mgr_x")
    assert result.returncode == 2, result.stderr
    assert "WRONG_VERSION_NUMBER" in result.stderr and "use http://" in result.stderr
    assert "retrying" not in result.stderr and "Traceback" not in result.stderr
    assert len(connections) == 1


# --- 408 and 429 ---------------------------------------------------------------------------------------------

THROTTLED = api_error("429 Too Many Requests", "throttled", "Request was throttled.")


def with_header(answer: bytes, header: str) -> bytes:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head + b"\r\n" + header.encode() + b"\r\n\r\n" + body


def test_a_429_is_retried_after_the_wait_its_retry_after_asks_for(servers):
    url, received = answering(servers, script=[with_header(THROTTLED, "Retry-After: 2")])
    started = time.monotonic()
    result = run(*RESOLVE, url=url, token="mgr_x")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 2
    assert "GET /api/v1/models/acme/churn/aliases/champion: HTTP 429; retrying in 2s" in result.stderr
    assert json.loads(result.stdout) == VERSION
    assert received[:2] == [b"GET /api/v1/models/acme/churn/aliases/champion HTTP/1.1"] * 2


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        (THROTTLED, "is limiting requests (GET /api/v1/models/acme/churn/aliases/champion): HTTP 429 throttled"),
        (
            http_answer("408 Request Timeout", b"<html>timed out</html>", "text/html"),
            "timed out waiting for the request (GET /api/v1/models/acme/churn/aliases/champion): HTTP 408",
        ),
    ],
    ids=["429", "408"],
)
def test_a_408_or_429_after_the_retries_is_a_network_error(servers, answer, shown):
    url, received = answering(servers, table={b"/": answer})
    result = run(*RESOLVE, "--retries", "1", url=url, token="mgr_x")
    assert result.returncode == 3, result.stderr
    assert "retrying in 1s" in result.stderr
    assert shown in result.stderr and "The command is safe to re-run." in result.stderr
    assert "refused" not in result.stderr and "Traceback" not in result.stderr
    assert len(received) == 2


def test_a_retry_after_longer_than_the_cap_ends_the_retries_at_once(servers):
    url, received = answering(servers, table={b"/": with_header(THROTTLED, "Retry-After: 3600")})
    started = time.monotonic()
    result = run(*RESOLVE, url=url, token="mgr_x")
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - started < 10
    assert "It asks to wait 3600s, longer than registry-cli waits (60s)" in result.stderr
    assert "retrying" not in result.stderr
    assert len(received) == 1


# --- options -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--url", "http://[::1"), "registry URL 'http://[::1' is not a valid URL"),
        (("--timeout", "-1"), "argument --timeout: must be more than 0"),
        (("--timeout", "0"), "argument --timeout: must be more than 0"),
        (("--timeout", "nan"), "argument --timeout: must be more than 0"),
        (("--timeout", "1e300"), "argument --timeout: must be more than 0 and at most 86400 seconds"),
        (("--timeout", "soon"), "argument --timeout: 'soon' is not a number of seconds"),
        (("--retries", "-1"), "argument --retries: must be 0 or more"),
    ],
    ids=["unclosed-ipv6", "timeout-negative", "timeout-0", "timeout-nan", "timeout-huge", "timeout-word", "retries"],
)
def test_a_network_option_that_cannot_work_is_a_usage_error(servers, options, message):
    url, received = answering(servers)
    result = run(*RESOLVE, *options, url=url, token="mgr_x")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and received == []
