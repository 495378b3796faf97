"""Releases made before deployment.release_start recorded the lineage "deployed" edge get it now,
as of their creation (the edge table is append-only: this only inserts)."""

from django.db import migrations

MODEL, RELEASE, DEPLOYED = 3, 4, 3  # lineage.choices NodeType.MODEL, NodeType.RELEASE, EdgeKind.DEPLOYED


def backfill(apps, schema_editor):
    Release = apps.get_model("governance", "Release")
    Edge = apps.get_model("lineage", "Edge")
    releases = Release.objects.values_list("pk", "version_id", "created_at").iterator(chunk_size=2000)
    batch = []
    for pk, version_id, created_at in releases:
        batch.append(
            Edge(src_type=MODEL, src_id=version_id, dst_type=RELEASE, dst_id=pk, kind=DEPLOYED, recorded_at=created_at)
        )
        if len(batch) == 2000:
            Edge.objects.bulk_create(batch, ignore_conflicts=True)
            batch = []
    Edge.objects.bulk_create(batch, ignore_conflicts=True)


class Migration(migrations.Migration):
    dependencies = [
        ("governance", "0005_canary_rollout"),
        ("lineage", "0002_append_only"),
    ]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
