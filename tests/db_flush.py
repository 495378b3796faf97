"""The flush after a transactional test: truncate only the tables that hold rows.

Django's TransactionTestCase empties the database after each test with `flush`: one TRUNCATE of every table (46
here, ~450 ms), then post_migrate, which creates every content type and permission again (~170 ms). A test writes
to a handful of tables. This flush truncates those (CASCADE: an empty table that references one of them need not
be named), keeps the content types and permissions (post_migrate would create the same rows again) and still
sends post_migrate, as `flush` does: guardian's anonymous user and anything else it makes comes back.
A transactional test that creates content types or permissions of its own must delete them itself: they are kept.
"""

from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management.color import no_style
from django.core.management.sql import emit_post_migrate_signal
from django.db import connections, transaction
from django.test import TransactionTestCase

KEPT = {ContentType._meta.db_table, Permission._meta.db_table}  # what post_migrate makes, and only it


def tables_with_rows(connection) -> list[str]:
    """The project's tables (as `flush` names them) that hold at least one row, in one statement."""
    tables = [t for t in connection.introspection.django_table_names(only_existing=True) if t not in KEPT]
    probes = " UNION ALL ".join(
        f"(SELECT {index} FROM {connection.ops.quote_name(table)} LIMIT 1)" for index, table in enumerate(tables)
    )
    with connection.cursor() as cursor:
        cursor.execute(probes)
        return [tables[index] for (index,) in cursor.fetchall()]


def flush_tables_with_rows(db_name: str) -> None:
    connection = connections[db_name]
    with transaction.atomic(using=db_name):
        tables = tables_with_rows(connection)
        connection.ops.execute_sql_flush(connection.ops.sql_flush(no_style(), tables, allow_cascade=True))
    emit_post_migrate_signal(verbosity=0, interactive=False, db=db_name)


_django_teardown = TransactionTestCase._fixture_teardown


def _fixture_teardown(self):
    if self.available_apps is not None or self.serialized_rollback:
        return _django_teardown(self)  # flush's own rules for those
    for db_name in self._databases_names(include_mirrors=False):
        flush_tables_with_rows(db_name)


def install() -> None:
    """Used by every TransactionTestCase (pytest-django's transactional_db included); TestCase rolls back instead
    and keeps its own _fixture_teardown."""
    TransactionTestCase._fixture_teardown = _fixture_teardown
