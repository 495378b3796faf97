from django.db import migrations

from core.db import ProtectRows

MESSAGE = "lineage facts are append-only: record a new fact (a later event, an unlink) instead"


class Migration(migrations.Migration):
    dependencies = [("lineage", "0001_initial")]

    # Whole rows are protected, except the nullable recorded_by_id (SET_NULL when a user is deleted;
    # the audit event keeps the actor's name).
    operations = [
        ProtectRows("lineage_dataset", message=MESSAGE),
        ProtectRows("lineage_job", message=MESSAGE),
        ProtectRows("lineage_run", message=MESSAGE),
        ProtectRows("lineage_datasetversion", message=MESSAGE),
        ProtectRows(
            "lineage_lineageevent",
            columns=[
                "kind",
                "event_type",
                "event_time",
                "producer",
                "schema_url",
                "run_id",
                "job_id",
                "dataset_id",
                "payload_sha256",
                "recorded_at",
            ],
            message=MESSAGE,
        ),
        ProtectRows("lineage_facet", message=MESSAGE),
        ProtectRows("lineage_edge", message=MESSAGE),
        ProtectRows(
            "lineage_versionrunlink",
            columns=["version_id", "run_uuid", "linked", "source", "reason", "event_id", "recorded_at"],
            message=MESSAGE,
        ),
    ]
