from django.db import migrations

from core.db import ProtectRows


class Migration(migrations.Migration):
    dependencies = [("registry", "0001_initial")]

    operations = [
        ProtectRows(
            "registry_modelversion",
            columns=[
                "model_id",
                "number",
                "digest",
                "manifest",
                "artifact_uri",
                "framework",
                "task",
                "params",
                "metrics",
                "metric_sources",
                "source",
                "created_at",
            ],
            message="model versions are immutable: their content cannot be changed or deleted",
        ),
        ProtectRows(
            "registry_modelcardrevision",
            columns=["version_id", "revision", "schema_version", "content", "created_at"],
            message="model card revisions are append-only: add a new revision instead",
        ),
    ]
