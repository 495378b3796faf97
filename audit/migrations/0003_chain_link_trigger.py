"""PostgreSQL links every inserted audit event into the chain itself (a BEFORE INSERT trigger).

Whatever an INSERT says about seq, prev_hash and hash is replaced: the trigger locks the chain head,
takes the next sequence number and the head's hash, computes hash = sha256(prev_hash || canonical
body) exactly as audit/chain.py defines it, and moves the head, all inside the inserting transaction.
So the chain cannot be forged by an INSERT (raw SQL included), and `audit.services.record()` appends in
one statement instead of three. SQLite keeps linking in Python (it has no sha256 in SQL).
"""

# ruff: noqa: S608 - the SQL is built from constants

from django.db import migrations

from audit.canonical_sql import canonical_sql

FUNCTION = f"""
CREATE OR REPLACE FUNCTION audit_chain_link() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
    head_hash varchar(64);
BEGIN
    SELECT seq, hash INTO head_seq, head_hash FROM audit_auditchainhead WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN  -- a fresh or flushed database
        INSERT INTO audit_auditchainhead (id, seq, hash) VALUES (1, 0, repeat('0', 64)) ON CONFLICT (id) DO NOTHING;
        SELECT seq, hash INTO head_seq, head_hash FROM audit_auditchainhead WHERE id = 1 FOR UPDATE;
    END IF;
    NEW.seq := head_seq + 1;
    NEW.prev_hash := head_hash;
    NEW.hash := encode(sha256(convert_to(head_hash || {canonical_sql("NEW.")}, 'UTF8')), 'hex');
    UPDATE audit_auditchainhead SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;
    RETURN NEW;
END $$
"""
TRIGGER = (
    "CREATE TRIGGER audit_chain_link BEFORE INSERT ON audit_auditevent FOR EACH ROW EXECUTE FUNCTION audit_chain_link()"
)
DROP = ["DROP TRIGGER IF EXISTS audit_chain_link ON audit_auditevent", "DROP FUNCTION IF EXISTS audit_chain_link()"]


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in (*DROP, FUNCTION, TRIGGER):
            schema_editor.execute(sql, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in DROP:
            schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_append_only")]

    operations = [migrations.RunPython(forwards, backwards)]
