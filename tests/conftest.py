"""Shared fixtures: the six personas, each with a full-scope API token, and authenticated API clients."""

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db.backends.signals import connection_created
from django.test.testcases import QuietWSGIRequestHandler
from rest_framework.test import APIClient

from accounts import roles, scopes, services
from governance.hosts.haproxy import HAProxyFleet
from tests import db_flush, processes, secret_scan

# pytest-django's live server writes a response's headers and its body in two sends. With Nagle's
# algorithm on, the body waits for the ACK of the headers, which a keep-alive client (requests.Session,
# Chromium) delays by 40 ms: every request after a connection's first took 44 ms instead of 2.
QuietWSGIRequestHandler.disable_nagle_algorithm = True

db_flush.install()  # after a transactional test, only the tables it wrote to are truncated


@dataclass
class Persona:
    name: str
    user: object
    token: str = field(repr=False)

    def client(self) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.token}")
        return client


PERSONA_GROUPS = {
    "admin": [],
    "owner": [roles.MODEL_OWNERS],
    "reviewer": [roles.REVIEWERS],
    "auditor": [roles.AUDITORS],
    "ci_bot": [roles.CI_BOTS],
    "outsider": [],
}


@pytest.fixture(autouse=True)
def artifact_root(settings, tmp_path):
    """Each test stores artifacts in its own directory (and hashes test passwords cheaply)."""
    from registry.storage import blob_store

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    blob_store.cache_clear()
    yield settings.ARTIFACT_ROOT
    blob_store.cache_clear()


@pytest.fixture
def personas(db) -> dict[str, Persona]:
    groups = roles.ensure_roles()
    User = get_user_model()
    result = {}
    for name, group_names in PERSONA_GROUPS.items():
        user = User.objects.create_user(
            username=name, password="pw-" + name, is_superuser=name == "admin", is_staff=name == "admin"
        )
        for group_name in group_names:
            user.groups.add(groups[group_name])
        issued = services.token_create(actor="test", user=user, name="all", scopes=list(scopes.ALL))
        result[name] = Persona(name=name, user=user, token=issued.plaintext)
    return result


@pytest.fixture
def make_token(db):
    def make(user, scope_list, **kwargs) -> str:
        return services.token_create(actor="test", user=user, name="t", scopes=scope_list, **kwargs).plaintext

    return make


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


# --- Secret scan (tests/secret_scan.py): no API token or host credential in logs, audit events or API
# responses, across the whole session; the run fails on any finding (pytest_sessionfinish below).

SESSION_SCANNER = None


def _allow_truncate(sender, connection, **kwargs):
    """Django's test flush truncates every table; the audit tables refuse TRUNCATE unless the session
    allows it (core.db.BlockTruncate). Only the test process's own connections do."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET registry.allow_truncate = on")


connection_created.connect(_allow_truncate, dispatch_uid="tests-allow-truncate")


def pytest_configure(config):
    config.addinivalue_line("markers", "plants_secrets: the test leaks secrets on purpose; the session scan skips it")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_ScanResultsFromWorkers())


@pytest.fixture(scope="session", autouse=True)
def secret_scanner(tmp_path_factory):
    global SESSION_SCANNER
    secret_scan.install()
    if SESSION_SCANNER is None:
        SESSION_SCANNER = secret_scan.SecretScanner()
        SESSION_SCANNER.log_roots = [tmp_path_factory.getbasetemp()]
        secret_scan.ACTIVE.append(SESSION_SCANNER)
    return SESSION_SCANNER


# The verdict comes after every test and fixture of every process: each process (pytest-xdist's workers, or
# the one process without it) ends its scan with the log files its servers and workers wrote, and the
# process that started the run fails it naming each leak.
SCAN_RESULTS: list[dict] = []
SCAN_VERDICT: list[str] = []


class _ScanResultsFromWorkers:
    def pytest_testnodedown(self, node, error):
        result = getattr(node, "workeroutput", {}).get("secret_scan")
        if result is None:  # a worker that crashed or sent nothing: its leaks are unknown, so the run fails
            worker = getattr(node, "workerinput", {}).get("workerid", "?")
            result = secret_scan.failed_result(f"worker {worker} sent no scan result ({error or 'no error given'})")
        SCAN_RESULTS.append(result)


@pytest.hookimpl(tryfirst=True)  # before the terminal summary, which reads the verdict
def pytest_sessionfinish(session):
    from django.conf import settings  # not at the top: fixtures here take pytest-django's `settings`

    config = session.config
    worker = hasattr(config, "workerinput")
    result = secret_scan.empty_result() if worker else None  # a worker that ran no test reports nothing found
    if SESSION_SCANNER is not None:
        try:
            result = SESSION_SCANNER.session_result([Path(settings.DATA_DIR), *SESSION_SCANNER.log_roots])
        except Exception as exc:  # noqa: BLE001 - a scan that could not finish must not pass for a clean one
            result = secret_scan.failed_result(f"the scan of this process failed: {exc!r}")
    if worker:  # a pytest-xdist worker: its controller gives the verdict
        config.workeroutput["secret_scan"] = result
        return
    if result is not None:
        SCAN_RESULTS.append(result)
    if SCAN_RESULTS:
        summary, failure = secret_scan.verdict(SCAN_RESULTS, expect_traffic=_whole_suite(config))
        SCAN_VERDICT.append(summary)
        if failure:
            SCAN_VERDICT.append(failure)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _whole_suite(config) -> bool:
    """The run is the whole suite (no paths, no selection): then a scan that saw no traffic checked nothing."""
    option = config.option
    selected = option.keyword or option.markexpr or option.deselect or getattr(option, "lf", False)
    return config.args_source == pytest.Config.ArgsSource.TESTPATHS and not selected


def pytest_terminal_summary(terminalreporter):
    if SCAN_VERDICT:
        terminalreporter.section("secret scan", red=len(SCAN_VERDICT) > 1, green=len(SCAN_VERDICT) == 1)
        for line in SCAN_VERDICT:
            terminalreporter.line(line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    finally:
        if SESSION_SCANNER is not None:
            SESSION_SCANNER.read_env_refs()  # while the test's own environment (monkeypatch) is still in place


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        if SESSION_SCANNER is not None:
            if item.get_closest_marker("plants_secrets"):
                SESSION_SCANNER.discard()
            else:
                SESSION_SCANNER.flush(item.nodeid)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory):
    """One freshly migrated SQLite database (the embedded default) for the session: migrating took
    6-10 s, and each test runs on a copy of its own."""
    return processes.migrated_sqlite(tmp_path_factory.mktemp("sqlite"))


@pytest.fixture
def sqlite_shell(migrated_sqlite, tmp_path):
    """`sqlite_shell(script)`: run `script` with `manage.py shell -c` in a process of its own on this test's
    copy of the migrated SQLite database; returns what it printed and the database file."""
    return lambda script: processes.sqlite_shell(tmp_path, script, migrated_sqlite)


@pytest.fixture(scope="session")
def selfhost_haproxy_binary() -> str:
    """The haproxy binary (scripts/dev.py test installs it). Never a skip."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if not found:
        pytest.fail("haproxy is not installed; run: apt-get install -y haproxy socat (scripts/dev.py test does it)")
    return found


@pytest.fixture
def selfhost_fleet(selfhost_haproxy_binary, tmp_path):
    """A real HAProxy with free ports and disabled model-server slots, stopped after the test."""
    fleet = HAProxyFleet(tmp_path / "haproxy", executable=selfhost_haproxy_binary)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop()
