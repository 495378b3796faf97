"""Django's PostgreSQL backend with a health check that costs no round trip (settings: ENGINE "core.postgres").

With CONN_HEALTH_CHECKS, Django sends `SELECT 1` before the first statement of every request that reuses a
connection: a round trip per request, a fifth of a registration's time in the service (bench/README.md).
An idle connection in autocommit mode has nothing to read unless the server is going away: a restart,
`pg_terminate_backend`, `idle_session_timeout` or a pooler's timeout send an error and close the socket.
So a socket with nothing to read is as usable as `SELECT 1` could show, and one with something to read
gets Django's `SELECT 1` (which fails on a closed connection, or consumes a harmless notice).

A silently dropped network path (no FIN) is not seen by either check until TCP gives up.
"""

import select

from django.db.backends.postgresql import base
from psycopg import pq


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self):
        conn = self.connection
        if conn is None or conn.closed:
            return False
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            return super().is_usable()
        try:
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return super().is_usable() if readable else True
