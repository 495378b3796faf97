"""registry-cli refuses, before any request, a source URL holding a credential, by the server's rule; it strips one
from a URL it read from the CI's variables; and it never prints the credential.

The server's rule is core/url_credentials.py `problem`. registry/cli.py cannot import the project (it runs as a
single file in CI images), so it repeats the rule: the first tests run both over the same table of URLs."""

import itertools
import os
import socketserver
import threading

import pytest

from accounts import scopes
from core import url_credentials
from registry import cli
from registry.models import ModelVersion
from tests.registry.test_cli import FAKE_GITHUB, run

MARK = "S3CR3T"  # a credential's value in the tables below
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# --- one table of URLs, both implementations ------------------------------------------------------------------

SCHEMES = ["https", "http", "HTTPS", "ssh", "git+https", "ftp", "s3"]
USERINFOS = [
    "",
    "git@",  # a user name: a credential in an http(s) URL only (the token is the user name), and no MARK
    "user:@",  # an empty password is a password
    f"user:{MARK}@",
    f":{MARK}@",
    f"{MARK}:x-oauth-basic@",  # GitHub: the token is the user name, and a password follows
    f"oauth2:glpat-{MARK}@",
    f"gitlab-ci-token:glcbt-64_{MARK}@",
    f"x:p@{MARK}@",  # an '@' in the password: the user part ends at the last '@'
    f"%40me:{MARK}@",
]
HTTP_USERINFOS = [f"ghp_{MARK}@", f"x-access-token:ghs_{MARK}@", "@"]  # credentials only as http(s) user parts
HOSTS = ["github.com", "ci.example.com:8443", "[::1]:8080", "build_agent:8080"]
QUERIES = [
    "",
    "?ref=main&attempt=2",
    f"?token={MARK}",
    f"?ref=main&TOKEN={MARK}",
    f"?X-Amz-Date=1&X-Amz-Signature={MARK}&X-Amz-Credential={MARK}",
    f"?%74oken={MARK}",  # read as 'token' by parse_qsl
    f"?private+token=visible&private_token={MARK}",
    "?tokens=visible&keys=visible&author=visible&key_id=visible",
    "?sig",  # a secret-named parameter with no value
    "?a=1;token=visible",  # ';' separates parameters for both rules (parse_qsl stopped reading it so in 3.10)
    "#access_token=visible",  # not a query, but where OAuth's implicit flow puts a token: refused all the same
]
ODD = [
    "",
    "git@github.com:acme/churn.git",
    "github.com/acme/churn",
    "not a url",
    "/job/1",
    "https://[::1",
    f"https://u:{MARK}@[::1/x",  # urlsplit cannot read it: what the masking would hide is refused all the same
    f"mailto:me:{MARK}@example.com",
    f"https://github.com/acme/churn?token={MARK}&token={MARK}",
    f"https://user:{MARK}@github.com/acme/churn?access_token={MARK}#readme",
]


def table() -> list[str]:
    urls = list(ODD)
    for scheme, host, query in itertools.product(SCHEMES, HOSTS, QUERIES):
        userinfos = USERINFOS + (HTTP_USERINFOS if scheme.lower() in ("http", "https", "git+https") else [])
        urls += [f"{scheme}://{userinfo}{host}/acme/churn/-/pipelines/7{query}" for userinfo in userinfos]
    return urls


URLS = table()


def test_the_cli_refuses_exactly_the_urls_the_server_refuses():
    refused, accepted = [], []
    for url in URLS:
        server, client = url_credentials.problem(url), cli.url_credential_problem(url)
        assert bool(server) == bool(client), (url, server, client)
        (refused if client else accepted).append(url)
    assert len(refused) > 1500 and len(accepted) > 150  # the table tries both outcomes, many times


UNREADABLE = {"https://[::1", f"https://u:{MARK}@[::1/x"}  # urlsplit raises ValueError


def test_what_the_cli_strips_the_server_takes_and_what_it_shows_holds_no_credential():
    for url in URLS:
        if not url_credentials.problem(url) or url in UNREADABLE:
            continue
        stripped = cli.url_without_credentials(url)
        if stripped == url:  # a token in a fragment: nothing to strip it from (source_from refuses it then)
            assert "#" in url, url
            continue
        assert url_credentials.problem(stripped) == "" and cli.url_credential_problem(stripped) is None, url
        assert MARK not in stripped, url
        assert MARK not in cli.redact_url(url), url


def test_the_cli_changes_no_url_the_server_takes():
    for url in URLS:
        if url_credentials.problem(url) or url in UNREADABLE:
            continue
        assert cli.url_without_credentials(url) == url
        assert cli.redact_url(url) == url
    assert cli.redact_url(f"https://u:{MARK}@[::1/x") == "https://***@[::1/x"  # shown masked all the same


def test_the_cli_masks_in_text_at_least_what_the_servers_logs_mask():
    for url in URLS:
        text = f"error: POST refused for '{url}' (see {url})"
        if MARK not in url_credentials.mask(text):
            assert MARK not in cli.mask_url_credentials(text), url
    # a token as the user name before :password, an '@' inside a password, an encoded name, a ';' separator
    for url in (
        f"https://{MARK}:x-oauth-basic@github.com/a/b",
        f"https://x:p@{MARK}@github.com/a/b",
        f"https://ci.example.com/run?%74oken={MARK}",
        f"https://ci.example.com/run?a=1;job_token={MARK}",
    ):
        text = f"cloning {url} failed"
        assert MARK not in url_credentials.mask(text) and MARK not in cli.mask_url_credentials(text), url
        assert url_credentials.mask(text) == cli.mask_url_credentials(text)
    assert cli.mask_url_credentials("ssh://git@github.com/a/b.git") == "ssh://git@github.com/a/b.git"


SECRET_NAMES = [
    "access_token",
    "accesstoken",
    "api_key",
    "apikey",
    "auth",
    "client_secret",
    "clientsecret",
    "key",
    "password",
    "passwd",
    "private_token",
    "privatetoken",
    "secret",
    "sig",
    "signature",
    "token",
    "x-amz-credential",
    "x-amz-security-token",
    "x-amz-signature",
    "x-goog-signature",
    "api-key",
    "private-token",
    "job_token",
    "x-api-key",
    "credential",
    "hf_token",
    "id_token",
    "aws_secret_access_key",
    "oauth_signature",
    "jwt",
    "pwd",
]
OTHER_NAMES = ["tokens", "keys", "authz", "author", "signed", "monkey", "passd", "pass", "x-amz-date", "key_id"]


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        *((n, True) for n in SECRET_NAMES),
        *((n.upper(), True) for n in SECRET_NAMES),
        *((n, False) for n in OTHER_NAMES),
    ],
)
def test_every_query_parameter_name_is_judged_alike(name, secret):
    url = f"https://ci.example.com/run/1?attempt=2&{name}=v"
    assert bool(cli.url_credential_problem(url)) == bool(url_credentials.problem(url)) == secret


# --- source_from: what the user passed is refused, what the CLI read is stripped -------------------------------

GITLAB = {
    "GITLAB_CI": "true",
    "CI_COMMIT_SHA": COMMIT,
    "CI_COMMIT_REF_NAME": "main",
    "CI_PROJECT_URL": "https://gitlab.example.com/acme/churn",
    "CI_PIPELINE_URL": "https://gitlab.example.com/acme/churn/-/pipelines/7",
}


def parse(*options: str):
    return cli.build_parser().parse_args(["register", "--model", "a/b", "--path", ".", *options])


@pytest.mark.parametrize(
    ("option", "value", "shown", "problem"),
    [
        (
            "--source-repo",
            f"https://x-access-token:ghs_{MARK}@github.com/acme/churn.git",
            "https://***@github.com/acme/churn.git",
            "holds a password (user:password@)",
        ),
        (
            "--source-repo",
            f"https://ghp_{MARK}@github.com/acme/churn.git",
            "https://***@github.com/acme/churn.git",
            "holds a user name before @",
        ),
        (
            "--ci-run-url",
            f"https://ci.example.com/run/1?attempt=2&X-Amz-Signature={MARK}",
            "https://ci.example.com/run/1?attempt=2&X-Amz-Signature=***",
            "holds the query parameter 'X-Amz-Signature'",
        ),
    ],
)
def test_a_credential_passed_as_an_option_is_a_usage_error_that_does_not_show_it(option, value, shown, problem):
    for environ in ({}, GITLAB, FAKE_GITHUB):  # an option wins over the CI's variables: it is refused, not stripped
        with pytest.raises(cli.UsageError) as refused:
            cli.source_from(parse(option, value), environ)
        message = str(refused.value)
        assert message.startswith(f"{option} '{shown}' {problem}"), message
        assert MARK not in message and refused.value.exit_code == cli.EXIT_USAGE == 2


def test_a_credential_in_a_url_read_from_gitlab_is_stripped_with_a_warning(capsys):
    environ = {
        **GITLAB,
        "CI_PROJECT_URL": f"https://gitlab-ci-token:{MARK}@gitlab.example.com/acme/churn",
        "CI_PIPELINE_URL": f"https://gitlab.example.com/acme/churn/-/pipelines/7?private_token={MARK}&ref=main",
    }
    assert cli.source_from(parse(), environ) == {
        "repository": "https://gitlab.example.com/acme/churn",
        "commit": COMMIT,
        "branch": "main",
        "ci_run_url": "https://gitlab.example.com/acme/churn/-/pipelines/7?ref=main",
    }
    err = capsys.readouterr().err
    assert "warning: $CI_PROJECT_URL 'https://***@gitlab.example.com/acme/churn' holds a password" in err
    assert "sending 'https://gitlab.example.com/acme/churn' instead" in err
    assert "warning: $CI_PIPELINE_URL '" in err and "private_token=***&ref=main" in err
    assert MARK not in err


def test_a_credential_in_githubs_server_url_is_stripped_from_both_urls(capsys):
    environ = {**FAKE_GITHUB, "GITHUB_SERVER_URL": f"https://{MARK}@github.example.com"}
    source = cli.source_from(parse(), environ)
    assert source["repository"] == "https://github.example.com/acme/churn-model"
    assert source["ci_run_url"] == "https://github.example.com/acme/churn-model/actions/runs/4242"
    err = capsys.readouterr().err
    assert err.count("warning: $GITHUB_SERVER_URL/$GITHUB_REPOSITORY") == 2 and MARK not in err
    # the option still wins, and what it names is not stripped but refused
    with pytest.raises(cli.UsageError, match="^--ci-run-url 'https://\\*\\*\\*@"):
        cli.source_from(parse("--ci-run-url", f"https://{MARK}@github.example.com/a/b/actions/runs/1"), environ)


def test_clean_urls_pass_untouched_and_silently(capsys):
    source = cli.source_from(parse("--source-repo", "ssh://git@github.com/acme/churn.git"), GITLAB)
    assert source["repository"] == "ssh://git@github.com/acme/churn.git"
    assert source["ci_run_url"] == GITLAB["CI_PIPELINE_URL"]
    assert capsys.readouterr().err == ""


# --- the CLI end to end: nothing reaches the server, nothing secret is printed ---------------------------------


@pytest.fixture
def recording_server():
    """A local HTTP server that records each request line and answers 500; yields (url, request lines)."""
    received = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = self.request.recv(65536)
                if not chunk:
                    break
                data += chunk
            received.append(data.split(b"\r\n", 1)[0])
            self.request.sendall(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"weights")
    return path


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--source-repo", f"https://x-access-token:ghs_{MARK}@github.com/acme/churn.git"),
        ("--source-repo", f"https://oauth2:glpat-{MARK}@gitlab.com/acme/churn.git"),
        ("--source-repo", f"https://ghp_{MARK}@github.com/acme/churn.git"),
        ("--source-repo", f"https://{MARK}:x-oauth-basic@github.com/acme/churn.git"),  # core's mask shows this one
        ("--source-repo", f"https://bot:p@{MARK}@github.com/acme/churn.git"),  # and this one
        ("--ci-run-url", f"https://ci.example.com/run/1?token={MARK}"),
        ("--ci-run-url", f"https://ci.example.com/run/1?%74oken={MARK}"),
        ("--ci-run-url", f"https://bot:{MARK}@ci.example.com/run/1"),
        ("--ci-run-url", f"https://bot:{MARK}@ci.example.com/run 1"),  # also no valid URL: the credential is named
        ("--source-repo", "https://bot:" + MARK + os.fsdecode(b"\xff") + "@github.com/a/b"),  # and not UTF-8
        ("--source-repo", f"https://bot:{'x' * 300}{MARK}@github.com/a/b"),  # longer than the 200 shown
        ("--artifact-uri", f"s3://AKIAEXAMPLE:{MARK}@bucket/models/churn"),
        ("--artifact-uri", f"s3://bucket/models/churn?X-Amz-Credential=AKIA&X-Amz-Signature={MARK}"),
    ],
)
def test_the_cli_refuses_a_credential_before_any_request_and_never_prints_it(
    recording_server, model_file, option, value
):
    url, received = recording_server
    for environ in ({}, GITLAB):
        result = run(
            "register",
            "--model",
            "acme/churn",
            "--path",
            str(model_file),
            option,
            value,
            url=url,
            token="mgr_x",
            extra_env=environ,
        )
        assert result.returncode == 2, result.stderr
        assert f"registry-cli: error: {option} '" in result.stderr
        assert "The registry refuses credentials in a version's source" in result.stderr
        assert MARK not in result.stdout + result.stderr
        assert "hashed" not in result.stderr  # refused before any work, too
    assert received == []  # no request reached the server
    # the server is listening: the same command without the credential does reach it
    clean = run("register", "--model", "acme/churn", "--path", str(model_file), "--retries", "0", url=url, token="x")
    assert clean.returncode == 1 and received, clean.stderr


def test_a_url_the_rule_cannot_read_is_still_shown_masked(recording_server, model_file):
    """urlsplit cannot read these; what the masking would hide in them is a credential to both rules all the same,
    and the messages that refuse them show them masked (every error the CLI prints is masked)."""
    url, received = recording_server
    not_utf8 = os.fsdecode(b"\xff")
    for option, value, message in [
        ("--ci-run-url", f"https://u:{MARK}@[::1/x", "--ci-run-url 'https://***@[::1/x' holds a credential"),
        (
            "--source-repo",
            f"https://u:{MARK}{not_utf8}@[::1/x",
            "--source-repo 'https://***@[::1/x' holds a credential",
        ),
    ]:
        result = run("register", "--model", "acme/churn", "--path", str(model_file), option, value, url=url, token="x")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert MARK not in result.stdout + result.stderr
    assert received == []


live = pytest.mark.django_db(transaction=True)


@live
def test_a_job_whose_ci_urls_hold_a_token_registers_without_it(live_server, personas, make_token, model_file):
    token = make_token(personas["ci_bot"].user, [scopes.READ, scopes.MODELS_WRITE, scopes.VERSIONS_WRITE])
    environ = {
        **GITLAB,
        "CI_PROJECT_URL": f"https://gitlab-ci-token:{MARK}@gitlab.example.com/acme/churn",
        "CI_PIPELINE_URL": f"https://gitlab.example.com/acme/churn/-/pipelines/7?ref=main&private_token={MARK}",
    }
    args = ("register", "--model", "acme/churn", "--path", str(model_file), "--create-model")
    result = run(*args, url=live_server.url, token=token, extra_env=environ)
    assert result.returncode == 0, result.stderr
    assert ModelVersion.objects.get().source == {
        "repository": "https://gitlab.example.com/acme/churn",
        "commit": COMMIT,
        "branch": "main",
        "ci_run_url": "https://gitlab.example.com/acme/churn/-/pipelines/7?ref=main",
    }
    assert "warning: $CI_PROJECT_URL" in result.stderr and "warning: $CI_PIPELINE_URL" in result.stderr
    assert MARK not in result.stdout + result.stderr
    # the server refuses these values as they were (the job would have failed); passed as an option, one is refused
    # before any request
    assert url_credentials.problem(environ["CI_PROJECT_URL"]) and url_credentials.problem(environ["CI_PIPELINE_URL"])
    passed = run(*args, "--source-repo", environ["CI_PROJECT_URL"], url=live_server.url, token=token, extra_env=environ)
    assert passed.returncode == 2 and MARK not in passed.stdout + passed.stderr
    assert ModelVersion.objects.count() == 1
