"""Django's PostgreSQL backend with a health check that costs no round trip (settings: ENGINE "core.postgres").

With CONN_HEALTH_CHECKS, Django sends `SELECT 1` before the first statement of every request that reuses a
connection: one more round trip per request (about a fifth of a registration's request time in a profile,
though little CPU: bench/README.md). An idle connection in autocommit mode has nothing to read unless the
server sent something on its own: it is going away (a restart, `pg_terminate_backend`, an idle timeout:
an error, then the socket closes), or a notice or notification arrived. So a socket with nothing to read
passes, and one with something to read gets Django's `SELECT 1`, which fails on a closed connection and
consumes a notice. So does a connection that is not idle, or whose socket cannot be polled.

A network path that drops without a FIN is not seen by either check until TCP gives up.
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
            poller = select.poll()  # not select.select(): that refuses descriptors >= 1024
            poller.register(conn.fileno(), select.POLLIN)
            readable = poller.poll(0)
        except Exception:  # noqa: BLE001 - whatever went wrong, the full check decides
            return super().is_usable()
        return super().is_usable() if readable else True
