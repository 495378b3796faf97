"""Delete stored artifacts no version names, once old enough (registry.pruning)."""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from registry.pruning import prune_artifacts

MIN_HOURS = 1  # an upload's scratch copy is written to as it arrives: an hour untouched is an upload cut off


class Command(BaseCommand):
    help = (
        "Delete the stored artifacts (blobs) that no version of any model names and that were last uploaded more "
        "than --older-than-hours ago (default a week), with their holdings (each audited: artifact.released, "
        "artifact.deleted), and upload scratch space as old. Safe beside running uploads and registrations."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than-hours",
            type=float,
            default=24 * 7,
            help=f"keep what was uploaded more recently than this (default 168, at least {MIN_HOURS})",
        )
        parser.add_argument("--dry-run", action="store_true", help="only list what would be deleted")

    def handle(self, *args, older_than_hours, dry_run, **options):
        if not older_than_hours >= MIN_HOURS:
            raise CommandError(
                f"--older-than-hours must be at least {MIN_HOURS}: a younger blob may belong to an upload or "
                "registration still under way."
            )
        report = prune_artifacts(before=timezone.now() - timedelta(hours=older_than_hours), dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        for sha256 in report.blobs:
            self.stdout.write(f"{verb} sha256:{sha256}")
        summary = f"{verb} {len(report.blobs)} blob(s), {report.bytes} bytes, {report.holdings} holding(s)"
        if not dry_run:
            summary += f", {report.scratch} scratch file(s)"
        self.stdout.write(summary)
