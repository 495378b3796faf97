"""TRUNCATE fires no row trigger, so the append-only triggers of 0002 did not stop it: refuse it."""

from django.db import migrations

from core.db import BlockTruncate

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
    dependencies = [("lineage", "0002_append_only")]

    operations = [BlockTruncate(table, message=MESSAGE) for table in TABLES]
