"""Each audit event stores its export line, written by the chain-link trigger as it links the event.

The export was bound by PostgreSQL building every line from the columns (about 4.5 µs per event); it
now reads the stored text. The trigger of 0003 is replaced by one that also sets `line` (whatever the
INSERT said, like seq and the hashes); events recorded before keep a null line, which the export
builds. No stored row is changed: the log stays append-only.
"""

from importlib import import_module

from django.db import migrations, models

from audit.canonical_sql import canonical_sql

WITHOUT_LINE = import_module("audit.migrations.0003_chain_link_trigger").FUNCTION
MOVE_HEAD = "    UPDATE audit_auditchainhead SET"
assert WITHOUT_LINE.count(MOVE_HEAD) == 1
# the line is built once the links are set, before the head moves
WITH_LINE = WITHOUT_LINE.replace(MOVE_HEAD, f"    NEW.line := {canonical_sql('NEW.', links=True)};\n{MOVE_HEAD}")


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(WITH_LINE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(WITHOUT_LINE, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_block_truncate")]

    operations = [
        migrations.AddField(model_name="auditevent", name="line", field=models.TextField(editable=False, null=True)),
        migrations.RunPython(forwards, backwards),
    ]
