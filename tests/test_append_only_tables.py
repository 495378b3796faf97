"""Every table whose rows the database protects (core.db.ProtectRows: UPDATE/DELETE triggers) also
refuses TRUNCATE, which fires no row trigger (core.db.BlockTruncate)."""

import os

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


def test_every_protection_that_names_columns_names_the_id():
    """A trigger that protects listed columns (not the whole row) lists the id: two rows' ids swapped in one
    transaction passed the deferred foreign-key checks, and what names a row by id then named the other."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND t.tgname LIKE %s",
            ["%_protect_update"],
        )
        triggers = dict(cursor.fetchall())
    by_columns = {table: definition for table, definition in triggers.items() if " WHEN " in definition}
    assert {"registry_modelversion", "lineage_versionrunlink", "governance_approval"} <= set(by_columns)
    assert {t for t, d in by_columns.items() if "(old.id IS DISTINCT FROM new.id)" not in d} == set()


def test_two_versions_cannot_swap_ids(personas):
    from tests.registry.helpers import register_body, s3_manifest

    owner = personas["owner"].client()
    owner.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json")
    for seed in (b"one", b"two"):
        assert (
            owner.post(
                "/api/v1/models/acme/churn/versions/", register_body(s3_manifest(seed)), format="json"
            ).status_code
            == 201
        )
    refused = pytest.raises(IntegrityError, match="model versions are immutable")
    with refused, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT id FROM registry_modelversion ORDER BY number")
        (one,), (two,) = cursor.fetchall()
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        cursor.execute("UPDATE registry_modelversion SET id = -id WHERE id IN (%s, %s)", [one, two])


def test_migrating_back_restores_the_protection_a_migration_widened(sqlite_shell, tmp_path):
    """Reversing a ProtectRows that widened a column list puts the previous list back: it dropped the triggers,
    and the table was left with no protection at all. On the embedded default (SQLite), in a process of its own."""
    import sqlite3

    from tests import processes

    _, db_file = sqlite_shell("pass")

    def update_trigger() -> str:
        with sqlite3.connect(db_file) as db:
            (sql,) = db.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'registry_modelversion_protect_update'"
            ).fetchone()
        return sql

    assert "OLD.id IS NOT NEW.id" in update_trigger()
    processes._sqlite_run(tmp_path / "data", db_file, "migrate", "registry", "0007", "--noinput")
    back = update_trigger()
    assert "OLD.id" not in back and "OLD.run_id IS NOT NEW.run_id" in back and "OLD.digest IS NOT NEW.digest" in back
    # past the migration that added run_id (an indexed column: SQLite rebuilds the table to remove it)
    processes._sqlite_run(tmp_path / "data", db_file, "migrate", "registry", "0002", "--noinput")
    assert "OLD.run_id" not in update_trigger() and "OLD.digest IS NOT NEW.digest" in update_trigger()
    processes._sqlite_run(tmp_path / "data", db_file, "migrate", "--noinput")
    assert "OLD.id IS NOT NEW.id" in update_trigger()


def test_the_setting_allows_a_truncate_only_to_the_tables_owner():
    """Any session may set registry.allow_truncate (even in its connection string): a role granted only TRUNCATE
    emptied the audit log with it, and the chain started again at genesis. Now the role must own the table (the
    owner could disable the trigger anyway); the suite's own flush, as the owner, still may."""
    role = f"truncate_only_{os.getpid()}"  # roles are the cluster's: one per test process
    with connection.cursor() as cursor:
        cursor.execute(f"DROP ROLE IF EXISTS {role}")
        cursor.execute(f"CREATE ROLE {role}")
        try:
            cursor.execute(f"GRANT TRUNCATE ON audit_auditevent, audit_auditchainhead TO {role}")
            with pytest.raises(IntegrityError, match="audit log is append-only"), transaction.atomic():
                cursor.execute(f"SET LOCAL ROLE {role}")
                cursor.execute("SET LOCAL registry.allow_truncate = on")
                cursor.execute("TRUNCATE audit_auditevent, audit_auditchainhead")
            with transaction.atomic():  # the owner (here a superuser), with the setting: allowed, then undone
                cursor.execute("SET LOCAL registry.allow_truncate = on")
                cursor.execute("TRUNCATE audit_auditevent, audit_auditchainhead")
                transaction.set_rollback(True)
        finally:
            cursor.execute(f"REVOKE ALL ON audit_auditevent, audit_auditchainhead FROM {role}")
            cursor.execute(f"DROP ROLE {role}")
