"""ModelVersion.model needs no index of its own: the unique (model, number) and (model, digest) indexes
and the (model, status, number) and (model, created_at) indexes all start with it, so every look-up by
model (the foreign key's check on a model's deletion included) can use one of them. Each registration
paid one more index entry for it. The database side is a plain DROP INDEX: on SQLite, AlterField would
remake the table, and with it drop the immutability triggers of 0002."""

from django.db import migrations, models

INDEX = "registry_modelversion_model_id_bed9c39a"


class Migration(migrations.Migration):
    dependencies = [("registry", "0005_block_truncate")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="modelversion",
                    name="model",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=models.PROTECT,
                        related_name="versions",
                        to="registry.registeredmodel",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f"DROP INDEX IF EXISTS {INDEX}",
                    f"CREATE INDEX IF NOT EXISTS {INDEX} ON registry_modelversion (model_id)",
                ),
            ],
        ),
    ]
