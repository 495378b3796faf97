import os
import sys
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit import selectors
from audit.api.serializers import ExportQuery


class Command(BaseCommand):
    help = (
        "Export audit events in chain order, as GET /api/v1/audit/events does (same formats and filters), "
        "straight from the database: to --output FILE (written whole or not at all) or to stdout. "
        "The last event's sequence number and hash go to stderr, with the command that verifies the file."
    )

    # Django's system checks load the URLconf and every view (13 MB): nothing an export reads from.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--format", default="ndjson", help="ndjson (default) or csv")
        parser.add_argument("--output", "-o", default="-", help="a file, or - for stdout (default)")
        parser.add_argument("--since", help="events at or after this time (RFC 3339)")
        parser.add_argument("--until", help="events before this time (RFC 3339)")
        parser.add_argument("--subject-type")
        parser.add_argument("--subject-id")
        parser.add_argument("--actor", help="actor username")
        parser.add_argument("--after-seq", help="events after this sequence number")

    def handle(self, *args, **options):
        given = {k: options[k] for k in ExportQuery().fields if options.get(k) is not None}
        query = ExportQuery(data=given)
        if not query.is_valid():
            raise CommandError(
                "; ".join(
                    f"--{field.replace('_', '-')}: {' '.join(map(str, errors))}"
                    for field, errors in query.errors.items()
                )
            )
        filters = dict(query.validated_data)
        fmt = filters.pop("format")
        export = selectors.export(fmt, **filters)
        if options["output"] == "-":
            out = sys.stdout.buffer
            for chunk in export.chunks:
                out.write(chunk)
            out.flush()
            where = "stdout"
        else:
            where = _write_whole(Path(options["output"]), export.chunks)
        summary = f"Exported audit events up to #{export.last_seq} (hash {export.last_hash}) to {where}."
        if fmt == "ndjson":
            flags = [" --partial"] * bool({"since", "until", "after_seq"} & filters.keys())
            flags += [" --allow-gaps"] * bool({"subject_type", "subject_id", "actor"} & filters.keys())
            saved = "FILE" if where == "stdout" else where
            summary += f"\nVerify: python audit/chain.py {saved}{''.join(flags)} --expect-head {export.last_hash}"
        self.stderr.write(summary)


def _write_whole(path: Path, chunks) -> Path:
    """Into a temporary file beside `path`, renamed over it once the last chunk is written: an export that
    fails midway leaves no file that looks complete."""
    if path.is_dir():
        raise CommandError(f"--output {path} is a directory: name a file.")
    if not path.parent.is_dir():
        raise CommandError(f"--output {path}: the directory {path.parent} does not exist.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
