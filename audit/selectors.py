"""Reading the audit log: filtered event sets, the chain head, and the export streams.

The export is the one place that reads the whole log, so it avoids per-event work: each event's NDJSON
line is stored as it is linked (AuditEvent.line), and the export reads and joins them, one short
statement per chunk, so memory stays flat whatever the size of the log.
"""

import csv
from collections.abc import Iterable, Iterator
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet

from audit import chain
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


def ndjson_chunks(qs: QuerySet[AuditEvent]) -> Iterator[bytes]:
    """The export: one canonical JSON line per event (with prev_hash and hash), EXPORT_BATCH lines per chunk.

    Each chunk is one short statement reading the stored lines after the last seq seen (a range scan of the
    primary key), so no Python runs per event beyond the join and no cursor stays open between chunks."""
    after = 0
    while True:
        rows = list(qs.filter(seq__gt=after).values_list("seq", "line")[:EXPORT_BATCH])
        if not rows:
            return
        after = rows[-1][0]
        lines = [line for _, line in rows]
        if None in lines:  # events recorded before lines were stored: build theirs
            missing = AuditEvent.objects.filter(seq__in=[seq for seq, line in rows if line is None])
            built = {event.seq: event.export_line() for event in missing}
            lines = [built[seq] if line is None else line for seq, line in rows]
        yield ("\n".join(lines) + "\n").encode()


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
