"""The TRUNCATE guard of 0005 allows a TRUNCATE only to a session that sets registry.allow_truncate and whose role
owns the table: the setting alone (any session may set it) let a role granted only TRUNCATE empty the tables."""

from django.db import migrations

from core.db import RenewTruncateGuard


class Migration(migrations.Migration):
    dependencies = [("registry", "0008_protect_ids")]

    operations = [
        RenewTruncateGuard("registry_modelversion", message="model versions are immutable: they cannot be truncated"),
        RenewTruncateGuard("registry_modelcardrevision", message="model card revisions are append-only"),
        RenewTruncateGuard("registry_versionsignature", message="version signatures are append-only"),
    ]
