"""TRUNCATE fires no row trigger, so the immutability triggers of 0002-0004 did not stop it: refuse it."""

from django.db import migrations

from core.db import BlockTruncate


class Migration(migrations.Migration):
    dependencies = [("registry", "0004_versionsignature")]

    operations = [
        BlockTruncate("registry_modelversion", message="model versions are immutable: they cannot be truncated"),
        BlockTruncate("registry_modelcardrevision", message="model card revisions are append-only"),
        BlockTruncate("registry_versionsignature", message="version signatures are append-only"),
    ]
