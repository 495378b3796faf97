"""libpq's protocol trace of the test's database connection."""

import contextlib
import tempfile
import types

from django.db import connection


@contextlib.contextmanager
def wire_trace():
    """Every protocol message on the test's connection (BEGIN, COMMIT and Django's health check included,
    which psycopg or Django send on their own and CaptureQueriesContext never sees)."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    with tempfile.TemporaryFile() as f:
        trace = types.SimpleNamespace(text="")
        pgconn.trace(f.fileno())
        try:
            yield trace
        finally:
            pgconn.untrace()
            f.seek(0)
            trace.text = f.read().decode(errors="replace")
