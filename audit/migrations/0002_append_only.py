from django.db import migrations

from audit.chain import GENESIS
from core.db import ProtectRows


def create_head(apps, schema_editor):
    apps.get_model("audit", "AuditChainHead").objects.get_or_create(pk=1, defaults={"seq": 0, "hash": GENESIS})


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [
        ProtectRows("audit_auditevent", message="audit events are append-only: they cannot be changed or deleted"),
        migrations.RunPython(create_head, migrations.RunPython.noop),
    ]
