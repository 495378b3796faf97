"""An event's time is the time it joins the chain, so times never decrease along the sequence numbers.

Until now `at` was the writer's clock when it built the event, before it waited for the chain head: a
writer that read its clock first could be linked second, and an export filtered by time (since/until),
which must be one contiguous run of sequence numbers to verify with `chain.py --partial`, could miss an
event in the middle and read as tampered. The trigger now sets `at` once it holds the head, from
clock_timestamp() but never earlier than the head's last time (a clock stepped back), and moves the
head's time with it. SQLite's linking in Python does the same (audit/services.py). Stored events are
not changed; the head starts from the latest stored time.
"""

# ruff: noqa: S608 - the SQL is built from constants

from importlib import import_module

from django.db import migrations, models
from django.db.models import Max

from audit.canonical_sql import canonical_sql

BEFORE = import_module("audit.migrations.0005_event_line").WITH_LINE
FUNCTION = f"""
CREATE OR REPLACE FUNCTION audit_chain_link() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
    head_hash varchar(64);
    head_at timestamptz;
BEGIN
    SELECT seq, hash, at INTO head_seq, head_hash, head_at FROM audit_auditchainhead WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN  -- a fresh or flushed database
        INSERT INTO audit_auditchainhead (id, seq, hash) VALUES (1, 0, repeat('0', 64)) ON CONFLICT (id) DO NOTHING;
        SELECT seq, hash, at INTO head_seq, head_hash, head_at FROM audit_auditchainhead WHERE id = 1 FOR UPDATE;
    END IF;
    NEW.seq := head_seq + 1;
    NEW.at := GREATEST(clock_timestamp(), head_at);  -- GREATEST skips a null
    NEW.prev_hash := head_hash;
    NEW.hash := encode(sha256(convert_to(head_hash || {canonical_sql("NEW.")}, 'UTF8')), 'hex');
    NEW.line := {canonical_sql("NEW.", links=True)};
    UPDATE audit_auditchainhead SET seq = NEW.seq, hash = NEW.hash, at = NEW.at WHERE id = 1;
    RETURN NEW;
END $$
"""


def forwards(apps, schema_editor):
    latest = apps.get_model("audit", "AuditEvent").objects.aggregate(at=Max("at"))["at"]
    apps.get_model("audit", "AuditChainHead").objects.filter(pk=1).update(at=latest)
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTION, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BEFORE, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0006_drop_pattern_indexes")]

    operations = [
        migrations.AddField(model_name="auditchainhead", name="at", field=models.DateTimeField(blank=True, null=True)),
        migrations.RunPython(forwards, backwards),
    ]
