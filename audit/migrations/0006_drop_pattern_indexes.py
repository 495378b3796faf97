"""Drop the two `varchar_pattern_ops` indexes Django adds on PostgreSQL beside a CharField's own index
(`action`, db_index) or unique constraint (`hash`). They serve only LIKE 'prefix%' queries, and nothing
reads actions or hashes by prefix; every audited write still paid an entry in each. The plain `action`
index and the unique `hash` index stay. Model state is unchanged: a later AlterField drops these names
with IF EXISTS."""

from django.db import migrations

PATTERN_INDEXES = {
    "audit_auditevent_action_2131bb77_like": "action",
    "audit_auditevent_hash_d0c402da_like": "hash",
}


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for name in PATTERN_INDEXES:
            schema_editor.execute(f"DROP INDEX IF EXISTS {name}", params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for name, column in PATTERN_INDEXES.items():
            schema_editor.execute(
                f"CREATE INDEX IF NOT EXISTS {name} ON audit_auditevent ({column} varchar_pattern_ops)", params=None
            )


class Migration(migrations.Migration):
    dependencies = [("audit", "0005_event_line")]

    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
