"""Reading the audit log: filtered event sets, the chain head, and the export streams.

The export is the one place that reads the whole log, so it avoids per-event Python work: on
PostgreSQL each NDJSON line is assembled by the database from the stored columns (`before`/`after`
already hold the canonical JSON text that was hashed) and each chunk of lines is joined there too,
one short statement per chunk, so memory stays flat whatever the size of the log.
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

EXPORT_BATCH = 2000  # events per streamed chunk (~1.4 MB of NDJSON) and per statement
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


def _postgres_line() -> RawSQL:
    # chain.canonical_json(event.as_export_dict()), built by PostgreSQL from the stored columns
    return RawSQL(canonical_sql(links=True), (), output_field=TextField())  # noqa: S611 - no input in it


def _postgres_chunks(qs: QuerySet[AuditEvent]) -> Iterator[bytes]:
    """EXPORT_BATCH lines per chunk, each chunk joined by PostgreSQL: one statement per chunk, the next
    one starting after the last seq seen (the index on seq makes each a short range scan), so no Python
    code runs per event and no cursor stays open between chunks."""
    after = 0
    with connection.cursor() as cursor:
        while True:
            page = qs.filter(seq__gt=after).annotate(line=_postgres_line()).values_list("seq", "line")
            sql, params = page[:EXPORT_BATCH].query.sql_with_params()
            query = f"SELECT string_agg(line, E'\\n' ORDER BY seq) || E'\\n', max(seq) FROM ({sql}) AS page"  # noqa: S608 - ORM SQL
            cursor.execute(query, params)
            text, after = cursor.fetchone()
            if text is None:
                return
            yield text.encode()


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
    """The export: one canonical JSON line per event (with prev_hash and hash), in chunks."""
    if connection.vendor == "postgresql":
        yield from _postgres_chunks(qs)
    else:
        yield from _chunked(_python_lines(qs), sep="\n")


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
