import json
from datetime import UTC, datetime

from django.db import models

from audit import chain


class AuditEvent(models.Model):
    """One change of state. Append-only in the database (see migration 0002) and hash-chained.

    Actor and subject are copied, not foreign keys: deleting a user or an object must never
    touch the log. `before`/`after` hold the canonical JSON text that was hashed, so what is
    verified is byte-for-byte what was written. `line` is the event's export line (canonical JSON of
    as_export_dict()), written once as the event is linked, so the export reads it instead of building
    it; null for events recorded before it existed (migration 0005), whose line the export builds.
    """

    seq = models.BigIntegerField(primary_key=True)
    at = models.DateTimeField(db_index=True)
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor_username = models.CharField(max_length=150, blank=True)
    token_id = models.BigIntegerField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=100, db_index=True)
    subject_type = models.CharField(max_length=100)
    subject_id = models.CharField(max_length=200)
    subject_repr = models.CharField(max_length=300, blank=True)
    before = models.TextField(default="null")
    after = models.TextField(default="null")
    reason = models.TextField(blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    line = models.TextField(null=True, editable=False)

    class Meta:
        ordering = ["seq"]
        indexes = [
            models.Index(fields=["subject_type", "subject_id", "seq"], name="audit_subject_idx"),
            models.Index(fields=["actor_id", "seq"], name="audit_actor_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.subject_type}:{self.subject_id}"

    def as_chain_dict(self) -> dict:
        """The event as hashed and exported (without prev_hash/hash)."""
        return {
            "seq": self.seq,
            "at": format_time(self.at),
            "actor_id": self.actor_id,
            "actor_username": self.actor_username,
            "token_id": self.token_id,
            "request_id": self.request_id,
            "action": self.action,
            "subject_type": self.subject_type,
            "subject_id": self.subject_id,
            "subject_repr": self.subject_repr,
            "before": json.loads(self.before),
            "after": json.loads(self.after),
            "reason": self.reason,
        }

    def as_export_dict(self) -> dict:
        return {**self.as_chain_dict(), "prev_hash": self.prev_hash, "hash": self.hash}

    def computed_hash(self) -> str:
        return chain.event_hash(self.prev_hash, self.as_chain_dict())

    def export_line(self) -> str:
        return chain.canonical_json(self.as_export_dict()).decode()


class AuditChainHead(models.Model):
    """The single row holding the chain's tip. Writers lock it, so the chain never forks."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default=chain.GENESIS)
    # the last event's time: the next event's is never earlier, even if the clock steps back (migration 0007)
    at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"head #{self.seq}"


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
