"""The TRUNCATE guard of 0004 allows a TRUNCATE only to a session that sets registry.allow_truncate and whose role
owns the table: the setting alone (any session may set it) let a role granted only TRUNCATE empty the tables."""

from django.db import migrations

from core.db import RenewTruncateGuard

MESSAGE = "the audit log is append-only: it cannot be truncated"


class Migration(migrations.Migration):
    dependencies = [("audit", "0008_head_moves_with_the_chain")]

    operations = [
        RenewTruncateGuard("audit_auditevent", message=MESSAGE),
        RenewTruncateGuard("audit_auditchainhead", message=MESSAGE),
    ]
