"""The TRUNCATE guard of 0007 allows a TRUNCATE only to a session that sets registry.allow_truncate and whose role
owns the table: the setting alone (any session may set it) let a role granted only TRUNCATE empty the tables."""

from django.db import migrations

from core.db import RenewTruncateGuard


class Migration(migrations.Migration):
    dependencies = [("governance", "0011_protect_ids")]

    operations = [
        RenewTruncateGuard("governance_policy", message="policies are versioned: they cannot be truncated"),
        RenewTruncateGuard("governance_approval", message="approvals are append-only: they cannot be truncated"),
    ]
