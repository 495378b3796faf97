"""Every table whose rows the database protects (core.db.ProtectRows: UPDATE/DELETE triggers) also
refuses TRUNCATE, which fires no row trigger (core.db.BlockTruncate)."""

import pytest
from django.db import IntegrityError, connection, transaction

pytestmark = pytest.mark.django_db


def _tables_with_trigger(suffix: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND t.tgname LIKE %s",
            [f"%{suffix}"],
        )
        return {name for (name,) in cursor.fetchall()}


def test_every_protected_table_refuses_truncate():
    protected = _tables_with_trigger("_protect_delete")
    assert {"registry_modelversion", "governance_approval", "lineage_edge", "audit_auditevent"} <= protected
    assert protected - _tables_with_trigger("_no_truncate") == set()


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("TRUNCATE registry_modelversion CASCADE", "model versions are immutable"),
        # the cascade reaches protected tables (versions, policies...): whichever trigger fires first refuses
        ("TRUNCATE registry_registeredmodel CASCADE", "immutable|append-only|versioned"),
        ("TRUNCATE governance_approval", "approvals are append-only"),
        ("TRUNCATE lineage_edge", "lineage facts are append-only"),
    ],
)
def test_truncate_is_refused_unless_the_session_allows_it(statement, message):
    with pytest.raises(IntegrityError, match=message), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL registry.allow_truncate = off")
        cursor.execute(statement)
