"""Reading the audit log: filtered event sets, the chain head, and the export streams.

The export is the one place that reads the whole log, so it avoids per-event work: each event's NDJSON
line is stored as it is linked (AuditEvent.line), and the export forwards them in chunks, so memory
stays flat whatever the size of the log.
"""

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import islice
from typing import NamedTuple

from django.core.exceptions import EmptyResultSet
from django.db import connection, transaction
from django.db.models import QuerySet, TextField
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce

from audit import chain
from audit.canonical_sql import canonical_sql
from audit.models import AuditChainHead, AuditEvent, format_time
from core import csv_safe

# Events per streamed chunk (~175 KB of NDJSON; per statement on SQLite). Measured on 1M events in-process:
# 250 exported in 1.9-2.2 s with the worker's memory flat, 2,000 (1.4 MB chunks) in 3.1-3.5 s and 7 MB more.
EXPORT_BATCH = 250
EXPORT_BATCHES_PER_COPY = 200  # PostgreSQL: chunks per COPY statement (~35 MB)
CSV_FETCH = 2000  # CSV: rows per fetch of the server-side cursor (a round trip each)
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


class Export(NamedTuple):
    chunks: Iterator[bytes]
    last_seq: int  # the last event included (0 and GENESIS when none is): verify with --expect-head
    last_hash: str
    # the first event included and the hash it links to (0 and GENESIS when none is): verify with --expect-start
    first_seq: int
    first_prev_hash: str
    # how many events the filters selected (the lines of an NDJSON export): verify with --expect-count, which
    # alone shows that no event was removed from between the first and the last of a filtered export
    count: int


EXPORT_FORMATS = ("ndjson", "csv")
# Filters that can leave out events between the first and the last selected: the export's events are counted.
# (since/until cut the log once each, except among concurrent events recorded before migration audit 0007.)
_GAPPED_FILTERS = ("since", "until", "subject_type", "subject_id", "actor")


def export(fmt: str = "ndjson", **filters) -> Export:
    """The events that `filters` select (see events()), as they stand now: whatever is appended while the
    chunks stream is left out, so where the export starts and ends, and how many events it holds, can be handed
    out before the first chunk."""
    qs = events(**filters)
    last = qs.order_by("-seq").values("seq", "hash").first() or {"seq": 0, "hash": chain.GENESIS}
    qs = qs.filter(seq__lte=last["seq"])
    first = qs.values("seq", "prev_hash").first() or {"seq": 0, "prev_hash": chain.GENESIS}  # in seq order
    # Sequence numbers have no gaps (the chain-link trigger) and events are never deleted, so a selection by
    # sequence number alone holds last - first + 1 events; count(*) would take another 0.1-0.6 s on 1M events.
    if any(filters.get(name) for name in _GAPPED_FILTERS):
        count = qs.count()
    else:
        count = last["seq"] - first["seq"] + 1 if first["seq"] else 0
    chunks = (csv_chunks if fmt == "csv" else ndjson_chunks)(qs)
    return Export(chunks, last["seq"], last["hash"], first["seq"], first["prev_hash"], count)


def ndjson_chunks(qs: QuerySet[AuditEvent]) -> Iterator[bytes]:
    """The export: one canonical JSON line per event (with prev_hash and hash), EXPORT_BATCH lines per chunk."""
    yield from (_copied_lines if connection.vendor == "postgresql" else _stored_lines)(qs)


def _copied_lines(qs: QuerySet[AuditEvent]) -> Iterator[bytes]:
    """PostgreSQL: COPY streams the stored lines, the database reading the next ones while these are sent; one
    COPY per EXPORT_BATCHES_PER_COPY chunks, the next after the last seq sent, so a slow client holds a
    statement (and its snapshot) for one range at most. Events recorded before lines were stored get theirs
    built by the SQL the chain-link trigger uses.

    COPY's text format escapes backslashes (doubled), control characters and NULL (\\N); a line holds no
    control character (JSON escapes them) and is never NULL, so undoubling the backslashes of whole rows (one
    COPY message each) gives the lines back byte for byte."""
    built = RawSQL(canonical_sql(links=True), (), output_field=TextField())  # noqa: S611 - no input in it
    lines = qs.annotate(export_line=Coalesce("line", built)).values_list("export_line")
    after, limit = 0, EXPORT_BATCH * EXPORT_BATCHES_PER_COPY
    with connection.wrap_database_errors, connection.cursor() as cursor:
        while True:
            try:
                sql, params = lines.filter(seq__gt=after)[:limit].query.sql_with_params()
            except EmptyResultSet:  # a filter no row can match, e.g. a seq beyond bigint: nothing to stream
                return
            sent, chunk = 0, b""
            with cursor.cursor.copy(f"COPY ({sql}) TO STDOUT", params) as copy:
                for rows in iter(lambda: list(islice(copy, EXPORT_BATCH)), []):
                    sent += len(rows)
                    chunk = b"".join(rows).replace(b"\\\\", b"\\")
                    yield chunk
            if sent < limit:
                return
            after = json.loads(chunk[chunk.rfind(b"\n", 0, -1) + 1 :])["seq"]  # the range's last line


def _batches(qs: QuerySet[AuditEvent], *fields: str) -> Iterator[list[tuple]]:
    """Elsewhere (SQLite): `fields` ("seq" first) of EXPORT_BATCH events per statement, the next after the last
    seq seen, with no transaction of their own, so nothing is held while a client reads a chunk: a transaction
    held across the stream would hold SQLite's write lock (transaction_mode IMMEDIATE), and every writer would
    wait for the download, then fail with "database is locked". The batches still read what one snapshot
    would: events are never updated or deleted (triggers), export() caps `qs` at the last seq when it starts,
    and SQLite commits one writer at a time, so no event at or below that seq can commit later."""
    after = 0
    while True:
        rows = list(qs.filter(seq__gt=after).values_list(*fields)[:EXPORT_BATCH])
        if not rows:
            return
        after = rows[-1][0]
        yield rows


def _stored_lines(qs: QuerySet[AuditEvent]) -> Iterator[bytes]:
    """Elsewhere: one statement per chunk (see _batches); lines that were never stored are built."""
    for rows in _batches(qs, "seq", "line"):
        lines = [line for _, line in rows]
        if None in lines:
            missing = AuditEvent.objects.filter(seq__in=[seq for seq, line in rows if line is None])
            built = {event.seq: event.export_line() for event in missing}
            lines = [built[seq] if line is None else line for seq, line in rows]
        yield ("\n".join(lines) + "\n").encode()


def _chunked(pieces: Iterable[str]) -> Iterator[bytes]:
    """EXPORT_BATCH pieces per chunk."""
    pieces = iter(pieces)
    for batch in iter(lambda: list(islice(pieces, EXPORT_BATCH)), []):
        yield "".join(batch).encode()


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_chunks(qs: QuerySet[AuditEvent]) -> Iterator[bytes]:
    """A header row, then CSV_COLUMNS per event (before/after as the stored canonical JSON text, None
    as ""), in chunks of EXPORT_BATCH rows. PostgreSQL reads them with one statement (a server-side cursor,
    CSV_FETCH rows per round trip, in a transaction of its own); elsewhere one statement per chunk (_batches)."""
    writer = csv.writer(_Echo())  # writerow() returns the formatted row
    at = CSV_COLUMNS.index("at")
    # Client text (subject_repr, reason, usernames, ids) must not run as a formula in a spreadsheet, so such
    # cells get a leading "'". before/after stay exact: canonical JSON starts like a formula only as a
    # negative number literal, which a spreadsheet reads as that number.
    escaped = [i for i, name in enumerate(CSV_COLUMNS) if name not in ("before", "after")]

    def rows(events: Iterable[tuple]) -> Iterator[str]:
        yield writer.writerow(CSV_COLUMNS)
        for row in events:
            row = ["" if value is None else value for value in row]
            row[at] = format_time(row[at])
            for i in escaped:
                row[i] = csv_safe.cell(row[i])
            yield writer.writerow(row)

    if connection.vendor == "postgresql":
        with transaction.atomic():
            yield from _chunked(rows(qs.values_list(*CSV_COLUMNS).iterator(chunk_size=CSV_FETCH)))
    else:
        yield from _chunked(rows(row for batch in _batches(qs, *CSV_COLUMNS) for row in batch))  # seq first
