"""The database connection's health check (core.postgres): a socket poll instead of Django's SELECT 1.

Each test starts its requests with close_old_connections(), as a WSGI server's request_started signal
does (Django's test client turns that signal off): that is what schedules the per-request check. Round
trips are counted on the wire (libpq's trace): every statement sent is one Query or Execute message,
whether psycopg has prepared it or not, while CaptureQueriesContext sees only the statements Django's
cursors run (the check uses a raw psycopg cursor).
"""

import re
import select
import time

import psycopg
import pytest
from django.conf import settings
from django.db import close_old_connections, connection
from django.test.utils import CaptureQueriesContext

from tests.wire import wire_trace

pytestmark = pytest.mark.django_db(transaction=True)


def other_connection() -> psycopg.Connection:
    db = connection.settings_dict
    return psycopg.connect(
        dbname=db["NAME"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        host=db["HOST"],
        port=db["PORT"] or 5432,
        autocommit=True,
    )


def request(client) -> tuple[int, int]:
    """One request as a WSGI server runs it: (statements sent on the wire, statements Django ran)."""
    with wire_trace() as wire, CaptureQueriesContext(connection) as django_ran:
        close_old_connections()  # a WSGI server's request_started
        assert client.get("/api/v1/models/").status_code == 200
    return len(re.findall(r"\tF\t\d+\t(?:Query|Execute)\b", wire.text)), len(django_ran)


def backend_pid() -> int:
    return connection.connection.info.backend_pid


def until(condition, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_the_check_is_on_and_uses_this_backend():
    assert settings.DATABASES["default"]["ENGINE"] == "core.postgres"
    assert connection.health_check_enabled and connection.settings_dict["CONN_MAX_AGE"] > 0


def test_a_live_idle_connection_is_reused_without_a_round_trip(personas):
    client = personas["owner"].client()
    for _ in range(7):  # past psycopg's prepare threshold: a prepared SELECT 1 would still be an Execute
        request(client)
    pid = backend_pid()
    on_wire, ran = request(client)
    assert ran > 0
    assert on_wire == ran  # with Django's backend: ran + 1
    assert backend_pid() == pid


def test_a_connection_the_server_ended_is_replaced_before_the_request_uses_it(personas):
    """pg_terminate_backend stands for a database restart or an idle timeout: the server sends FATAL and
    closes the socket. The next request must get a new connection, not a 500."""
    client = personas["owner"].client()
    request(client)
    pid = backend_pid()
    with other_connection() as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
        until(
            lambda: not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone(),
            "the backend did not exit",
        )
    request(client)
    assert backend_pid() != pid


def test_a_readable_but_healthy_connection_gets_the_full_check_and_is_kept(personas):
    """Something to read is not always a closing server: here a notification. SELECT 1 decides."""
    client = personas["owner"].client()
    request(client)
    pid = backend_pid()
    with connection.cursor() as cursor:
        cursor.execute("LISTEN registry_health_check_test")
    with other_connection() as admin:
        admin.execute("NOTIFY registry_health_check_test")
    socket = connection.connection.fileno()
    until(lambda: select.select([socket], [], [], 0)[0], "the notification did not arrive")
    on_wire, ran = request(client)
    assert on_wire == ran + 1  # the SELECT 1
    assert backend_pid() == pid
