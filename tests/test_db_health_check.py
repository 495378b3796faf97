"""The database connection's health check (core.postgres): a socket poll instead of Django's SELECT 1.

Each test starts its requests with close_old_connections(), as a WSGI server's request_started signal
does (Django's test client turns that signal off): that is what schedules the per-request check.
"""

import re
import time

import psycopg
import pytest
from django.conf import settings
from django.db import close_old_connections, connection

from tests.wire import wire_trace

pytestmark = pytest.mark.django_db(transaction=True)


def other_connection() -> psycopg.Connection:
    db = connection.settings_dict
    return psycopg.connect(
        dbname=db["NAME"], user=db["USER"], host=db["HOST"], port=db["PORT"] or 5432, autocommit=True
    )


def request(client) -> None:
    close_old_connections()  # a WSGI server's request_started
    assert client.get("/api/v1/models/").status_code == 200


def health_checks(trace: str) -> list[str]:
    """The SELECT 1 statements the client sent (not the "SELECT 1" tag of a one-row result)."""
    return re.findall(r'\tF\t\d+\t(?:Query|Parse)\t.*"SELECT 1"', trace)


def backend_pid() -> int:
    return connection.connection.info.backend_pid


def test_the_check_is_on_and_uses_this_backend():
    assert settings.DATABASES["default"]["ENGINE"] == "core.postgres"
    assert connection.health_check_enabled and connection.settings_dict["CONN_MAX_AGE"] > 0


def test_a_live_idle_connection_is_reused_without_a_round_trip(personas):
    client = personas["owner"].client()
    request(client)
    pid = backend_pid()
    with wire_trace() as wire:
        request(client)
    assert backend_pid() == pid
    assert not health_checks(wire.text), wire.text
    assert re.search(r"\tF\t\d+\t(Query|Execute)\b", wire.text), wire.text  # the trace saw the request


def test_a_connection_the_server_ended_is_replaced_before_the_request_uses_it(personas):
    """pg_terminate_backend stands for a database restart or an idle timeout: the server sends FATAL and
    closes the socket. The next request must get a new connection, not a 500."""
    client = personas["owner"].client()
    request(client)
    pid = backend_pid()
    with other_connection() as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
        deadline = time.monotonic() + 10
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            assert time.monotonic() < deadline, "the backend did not exit"
            time.sleep(0.02)
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
    time.sleep(0.2)  # the notification reaches the idle connection's socket
    with wire_trace() as wire:
        request(client)
    assert health_checks(wire.text), wire.text
    assert backend_pid() == pid
