"""Deleting stored artifacts no version names: uploads CI sent for a registration that never came (a failed job,
a retry under another digest), and scratch copies of uploads that were cut off.

A blob is pruned when no version of any model names it in its manifest and every holding of it (the models its
bytes were sent for, registry.models.BlobHolding) was last sent before the cutoff; a stored blob no model holds
(its upload ended before the holding was recorded), when it was stored before the cutoff. Its holdings go with it,
each audited (`artifact.released`, on the model), then its bytes (`artifact.deleted`).

Each blob is decided and deleted under its exclusive lock (registry.services.lock_blobs), which waits for the
registrations and uploads that rely on it and holds off new ones until the deletion commits: a registration checks
its files under the shared lock, so the version naming a blob commits before the pruning looks (and the blob is
kept), or the registration finds the blob gone (400 artifacts_missing); an upload whose bytes were found stored
looks again under the lock (409 artifact_pruned). The bytes are deleted before the audit events are appended (which
hold the chain's head until commit, not through a storage call): if deleting fails, nothing is recorded.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Max
from django.db.models.functions import Coalesce

from audit.services import record_many
from registry.models import BlobHolding
from registry.services import lock_blobs
from registry.storage import blob_store

log = logging.getLogger(__name__)

ACTOR = "cli:prune_artifacts"
_CHECK_BATCH = 1000

# The files every version names, one row each (FROM), and the sha256 of one (the expression).
_NAMED_FILES = {
    "postgresql": ("registry_modelversion, jsonb_array_elements(manifest->'files') f", "f->>'sha256'"),
    "sqlite": ("registry_modelversion, json_each(manifest, '$.files') f", "json_extract(f.value, '$.sha256')"),
}
# When a holding's bytes were last sent for its model.
_LAST_SENT = Coalesce("sent_again_at", "created_at")


@dataclass
class PruneReport:
    blobs: list[str] = field(default_factory=list)  # sha256s deleted (or, in a dry run, that would be)
    bytes: int = 0
    holdings: int = 0
    scratch: int = 0


def prune_artifacts(*, before: datetime, dry_run: bool = False) -> PruneReport:
    """Delete the blobs no version names that were last sent (or, unheld, stored) before `before`, and scratch
    space older than that. With dry_run, only say what would go."""
    store = blob_store()
    report = PruneReport()
    for sha256 in sorted(_unnamed_held(before) | _unheld_stored(store, before)):
        _prune_blob(store, sha256, before, dry_run, report)
    if not dry_run:
        report.scratch = store.delete_scratch(before=before)
    return report


def _unnamed_held(before: datetime) -> set[str]:
    """Blobs every holding of which was last sent before `before`, that no version names."""
    held = (
        BlobHolding.objects.values("sha256")
        .annotate(last_sent=Max(_LAST_SENT))
        .filter(last_sent__lt=before)
        .values_list("sha256", flat=True)
    )
    held_sql, params = held.query.sql_with_params()
    files, sha256 = _NAMED_FILES[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(f"{held_sql} EXCEPT SELECT {sha256} FROM {files}", params)  # noqa: S608
        return {found for (found,) in cursor.fetchall()}


def _unheld_stored(store, before: datetime) -> set[str]:
    """Stored blobs no model holds, stored before `before`."""
    found: set[str] = set()
    batch: list[str] = []
    for listed in store.listing():
        if listed.modified < before:
            batch.append(listed.sha256)
        if len(batch) == _CHECK_BATCH:
            found |= _unheld(batch)
            batch = []
    return found | _unheld(batch)


def _unheld(shas: list[str]) -> set[str]:
    return set(shas) - set(BlobHolding.objects.filter(sha256__in=shas).values_list("sha256", flat=True))


def _named(sha256: str) -> bool:
    files, named = _NAMED_FILES[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {files} WHERE {named} = %s)", [sha256])  # noqa: S608
        return bool(cursor.fetchone()[0])


def _prune_blob(store, sha256: str, before: datetime, dry_run: bool, report: PruneReport) -> None:
    """Decide again under the blob's exclusive lock (what was read before it may have changed), then delete."""
    with transaction.atomic():
        lock_blobs([sha256], shared=False)
        if _named(sha256):
            return
        holdings = list(BlobHolding.objects.filter(sha256=sha256).select_related("model").annotate(sent=_LAST_SENT))
        if any(holding.sent >= before for holding in holdings):
            return
        size = store.size(sha256)
        if size is None and not holdings:
            return
        report.blobs.append(sha256)
        report.bytes += size or 0
        report.holdings += len(holdings)
        if dry_run:
            return
        events = [
            {
                "action": "artifact.released",
                "subject": holding.model,
                "actor": ACTOR,
                "before": {"sha256": sha256, "held_since": holding.created_at.isoformat()},
                "reason": "no version names it and its bytes were last sent before the cutoff",
            }
            for holding in holdings
        ]
        if size is not None:
            events.append(
                {
                    "action": "artifact.deleted",
                    "subject_type": "registry.blob",
                    "subject_id": sha256,
                    "subject_repr": f"sha256:{sha256}",
                    "actor": ACTOR,
                    "before": {"sha256": sha256, "size": size},
                    "reason": f"no version names it; pruned with cutoff {before.isoformat()}",
                }
            )
        BlobHolding.objects.filter(pk__in=[holding.pk for holding in holdings]).delete()
        if size is not None:  # before the audit events, which hold the chain's head to commit: not during an S3 call
            store.delete(sha256)
        record_many(events)
        log.info("pruned blob %s (%s bytes, %d holdings)", sha256, size, len(holdings))
