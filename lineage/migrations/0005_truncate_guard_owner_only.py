"""The TRUNCATE guard of 0003 allows a TRUNCATE only to a session that sets registry.allow_truncate and whose role
owns the table: the setting alone (any session may set it) let a role granted only TRUNCATE empty the tables."""

from django.db import migrations

from core.db import RenewTruncateGuard

MESSAGE = "lineage facts are append-only: they cannot be truncated"
TABLES = [
    "lineage_dataset",
    "lineage_job",
    "lineage_run",
    "lineage_datasetversion",
    "lineage_lineageevent",
    "lineage_facet",
    "lineage_edge",
    "lineage_versionrunlink",
]


class Migration(migrations.Migration):
    dependencies = [("lineage", "0004_protect_ids")]

    operations = [RenewTruncateGuard(table, message=MESSAGE) for table in TABLES]
