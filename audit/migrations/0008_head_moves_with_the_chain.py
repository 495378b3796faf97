"""The chain head moves only one step forward, as an event is linked, and cannot be deleted.

The events are append-only (0002), but until now the head row could be rewritten: a stray UPDATE setting
it back forks the chain (the next event re-uses a sequence number or links to a hash that is not the last
event's), and an audit export then reads as tampered. On PostgreSQL only the chain-link trigger (0003)
moves the head: an UPDATE from anywhere else (the ORM, a psql session) is refused, as is a move that is
not exactly one step. On SQLite, which links in Python (audit/services.py), the head may only move to the
stored event that follows the current head. Deleting the head is refused on both; TRUNCATE already is (0004).
"""

# ruff: noqa: S608 - the SQL is built from constants

from django.db import migrations

MESSAGE = "the audit chain head moves only by appending an audit event"
POSTGRESQL = [
    f"""CREATE OR REPLACE FUNCTION audit_head_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- depth 1 is a statement on the head itself; the chain-link trigger's own UPDATE runs at depth 2
        IF TG_OP = 'DELETE' OR pg_trigger_depth() < 2 OR NEW.id <> OLD.id OR NEW.seq <> OLD.seq + 1 THEN
            RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN NEW;
    END $$""",
    "CREATE TRIGGER audit_head_guard BEFORE UPDATE OR DELETE ON audit_auditchainhead "
    "FOR EACH ROW EXECUTE FUNCTION audit_head_guard()",
]
POSTGRESQL_DROP = [
    "DROP TRIGGER IF EXISTS audit_head_guard ON audit_auditchainhead",
    "DROP FUNCTION IF EXISTS audit_head_guard()",
]
SQLITE = [
    "CREATE TRIGGER audit_head_guard_update BEFORE UPDATE ON audit_auditchainhead FOR EACH ROW "
    "WHEN NEW.id IS NOT OLD.id OR NEW.seq IS NOT OLD.seq + 1 OR NOT EXISTS ("
    " SELECT 1 FROM audit_auditevent e WHERE e.seq = NEW.seq AND e.hash = NEW.hash AND e.prev_hash = OLD.hash"
    f" AND e.at = NEW.at) BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END",
    "CREATE TRIGGER audit_head_guard_delete BEFORE DELETE ON audit_auditchainhead FOR EACH ROW "
    f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END",
]
SQLITE_DROP = ["DROP TRIGGER IF EXISTS audit_head_guard_update", "DROP TRIGGER IF EXISTS audit_head_guard_delete"]


def _run(schema_editor, statements: dict[str, list[str]]) -> None:
    for sql in statements.get(schema_editor.connection.vendor, []):
        schema_editor.execute(sql, params=None)


def forwards(apps, schema_editor):
    _run(schema_editor, {"postgresql": POSTGRESQL_DROP + POSTGRESQL, "sqlite": SQLITE_DROP + SQLITE})


def backwards(apps, schema_editor):
    _run(schema_editor, {"postgresql": POSTGRESQL_DROP, "sqlite": SQLITE_DROP})


class Migration(migrations.Migration):
    dependencies = [("audit", "0007_event_time_follows_chain")]

    operations = [migrations.RunPython(forwards, backwards)]
