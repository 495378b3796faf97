from django.db import migrations

from core.db import ProtectRows

# The id is part of what is protected: two ids swapped in one transaction passed the deferred foreign-key checks, and
# everything that names a row by id (cards, signatures, run links, approvals, audit subjects) then named the other.

VERSION_COLUMNS = [  # protected by 0003
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
    "run_id",
    "created_at",
]
CARD_COLUMNS = ["version_id", "revision", "schema_version", "content", "created_at"]  # protected by 0002


class Migration(migrations.Migration):
    dependencies = [("registry", "0007_blob_holding")]

    operations = [
        ProtectRows(
            "registry_modelversion",
            columns=["id", *VERSION_COLUMNS],
            replaces=VERSION_COLUMNS,
            message="model versions are immutable: their content cannot be changed or deleted",
        ),
        ProtectRows(
            "registry_modelcardrevision",
            columns=["id", *CARD_COLUMNS],
            replaces=CARD_COLUMNS,
            message="model card revisions are append-only: add a new revision instead",
        ),
    ]
