"""Reading the audit log: filtered event sets, the chain head, and the export streams.

The export is the one place that reads the whole log, so it avoids per-event Python work: on
PostgreSQL each NDJSON line is assembled by the database from the stored columns (`before`/`after`
already hold the canonical JSON text that was hashed), and rows are read through a server-side
cursor inside a transaction, so nothing is materialized and memory stays flat whatever the size.
"""

import csv
from collections.abc import Iterable, Iterator
from datetime import datetime

from django.db import connection, transaction
from django.db.models import QuerySet, TextField
from django.db.models.expressions import RawSQL

from audit import chain
from audit.canonical_sql import canonical_sql
from audit.models import AuditChainHead, AuditEvent, format_time

EXPORT_BATCH = 5000  # rows per fetch and per streamed chunk (~3 MB of NDJSON)
CSV_COLUMNS = [*chain.EVENT_FIELDS, "prev_hash", "hash"]


def events(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    actor: str | None = None,
    after_seq: int | None = None,
) -> QuerySet[AuditEvent]:
    """Events in chain order, filtered. Callers check the audit permission first."""
    qs = AuditEvent.objects.order_by("seq")
    if since:
        qs = qs.filter(at__gte=since)
    if until:
        qs = qs.filter(at__lt=until)
    if subject_type:
        qs = qs.filter(subject_type=subject_type)
    if subject_id:
        qs = qs.filter(subject_id=subject_id)
    if actor:
        qs = qs.filter(actor_username=actor)
    if after_seq is not None:
        qs = qs.filter(seq__gt=after_seq)
    return qs


def head() -> AuditChainHead:
    return AuditChainHead.objects.filter(pk=1).first() or AuditChainHead()


def _postgres_lines(qs: QuerySet[AuditEvent]) -> Iterator[str]:
    # chain.canonical_json(event.as_export_dict()), built by PostgreSQL from the stored columns
    line = RawSQL(canonical_sql(links=True), (), output_field=TextField())  # noqa: S611 - no input in it
    lines = qs.annotate(line=line).values_list("line", flat=True)
    return lines.iterator(chunk_size=EXPORT_BATCH)


def _python_lines(qs: QuerySet[AuditEvent]) -> Iterator[str]:
    for event in qs.iterator(chunk_size=EXPORT_BATCH):
        yield chain.canonical_json(event.as_export_dict()).decode()


def _chunked(pieces: Iterable[str], sep: str = "") -> Iterator[bytes]:
    """EXPORT_BATCH pieces per chunk, each followed by `sep`."""
    batch: list[str] = []
    for piece in pieces:
        batch.append(piece)
        if len(batch) == EXPORT_BATCH:
            yield (sep.join(batch) + sep).encode()
            batch.clear()
    if batch:
        yield (sep.join(batch) + sep).encode()


def ndjson_chunks(qs: QuerySet[AuditEvent]) -> Iterator[bytes]:
    """The export: one canonical JSON line per event (with prev_hash and hash), in chunks.

    Inside a transaction Django's server-side cursor is not WITH HOLD, so PostgreSQL streams the
    rows instead of materializing the result when the statement's implicit transaction ends.
    """
    with transaction.atomic():
        lines = _postgres_lines(qs) if connection.vendor == "postgresql" else _python_lines(qs)
        yield from _chunked(lines, sep="\n")


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_chunks(qs: QuerySet[AuditEvent]) -> Iterator[bytes]:
    """A header row, then CSV_COLUMNS per event (before/after as the stored canonical JSON text, None
    as ""), in chunks of EXPORT_BATCH rows."""
    writer = csv.writer(_Echo())  # writerow() returns the formatted row
    at = CSV_COLUMNS.index("at")

    def rows() -> Iterator[str]:
        yield writer.writerow(CSV_COLUMNS)
        for row in qs.values_list(*CSV_COLUMNS).iterator(chunk_size=EXPORT_BATCH):
            row = ["" if value is None else value for value in row]
            row[at] = format_time(row[at])
            yield writer.writerow(row)

    with transaction.atomic():
        yield from _chunked(rows())
