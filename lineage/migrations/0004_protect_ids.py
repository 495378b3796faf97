from django.db import migrations

from core.db import ProtectRows

MESSAGE = "lineage facts are append-only: record a new fact (a later event, an unlink) instead"

# The id is part of what is protected: link and unlink facts are ordered by id, so swapping a link's id with its later
# unlink's brought a retracted producing run back without touching a protected column.

EVENT_COLUMNS = [  # protected by 0002
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
]
LINK_COLUMNS = ["version_id", "run_uuid", "linked", "source", "reason", "event_id", "recorded_at"]  # 0002's


class Migration(migrations.Migration):
    dependencies = [("lineage", "0003_block_truncate")]

    operations = [
        ProtectRows("lineage_lineageevent", columns=["id", *EVENT_COLUMNS], replaces=EVENT_COLUMNS, message=MESSAGE),
        ProtectRows("lineage_versionrunlink", columns=["id", *LINK_COLUMNS], replaces=LINK_COLUMNS, message=MESSAGE),
    ]
