"""TRUNCATE fires no row trigger, so the append-only triggers of 0002 did not stop it: refuse it."""

from django.db import migrations

from core.db import BlockTruncate

MESSAGE = "the audit log is append-only: it cannot be truncated"


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_chain_link_trigger")]

    operations = [
        BlockTruncate("audit_auditevent", message=MESSAGE),
        BlockTruncate("audit_auditchainhead", message=MESSAGE),
    ]
