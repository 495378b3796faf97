"""TRUNCATE fires no row trigger, so the append-only triggers of 0002 did not stop it: refuse it."""

from django.db import migrations

from core.db import BlockTruncate


class Migration(migrations.Migration):
    dependencies = [("governance", "0006_release_lineage_edges")]

    operations = [
        BlockTruncate("governance_policy", message="policies are versioned: they cannot be truncated"),
        BlockTruncate("governance_approval", message="approvals are append-only: they cannot be truncated"),
    ]
