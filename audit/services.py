"""Writing the audit log. `record()` is the only way in; services call it inside their transaction."""

# ruff: noqa: S608 - the INSERT names the model's table and columns; values are bound parameters

import json
import re
import secrets

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models
from django.db.models.signals import post_save
from django.utils import timezone

from audit import chain
from audit.models import AuditChainHead, AuditEvent
from core import context
from core.logging import redact as mask_secrets

REDACTED = "[redacted]"
SUBJECT_REPR_LENGTH = AuditEvent._meta.get_field("subject_repr").max_length
_SECRET_KEY = re.compile(
    r"(secrets?|passw(or)?ds?|api[_-]?key|private[_-]?key|secret[_-]?(access[_-]?)?key|credentials?|authorization"
    r"|(^|_)token)$",
    re.IGNORECASE,
)


def secret_name(key) -> bool:
    """Whether a key names a secret (its value is never kept: redact()). A '.' separates words as '_' does, as in
    property names (spark.hadoop.fs.s3a.secret.key)."""
    return isinstance(key, str) and _SECRET_KEY.search(key.replace(".", "_")) is not None


_SECRET_VALUE = re.compile(r"^(mgr_[A-Za-z0-9]+_[A-Za-z0-9_-]{16,}|whsec_\S+|Bearer\s+\S+)$")


def redact(value):
    """Replace anything that looks like a secret (by key name or by value shape) with a marker; an API token
    or webhook secret inside longer text is masked as the logs mask it (the audit log is append-only: a secret
    pasted into it could never be removed)."""
    if isinstance(value, dict):
        return {k: (REDACTED if secret_name(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return REDACTED if _SECRET_VALUE.match(value) else mask_secrets(value)
    return value


def subject_text(text: str) -> str:
    """An event's subject_repr: an object's name, masked as the logs are (a token pasted as a token's or webhook's
    name would stay in the append-only log for good), cut to the column's length."""
    return mask_secrets(text)[:SUBJECT_REPR_LENGTH]


def _to_json_text(value) -> str:
    plain = json.loads(json.dumps(value, cls=DjangoJSONEncoder))
    return chain.canonical_json(redact(plain)).decode()


def _lock_head() -> AuditChainHead:
    head = AuditChainHead.objects.select_for_update(no_key=True).filter(pk=1).first()
    if head is None:  # fresh or flushed database: create the head, then lock it
        AuditChainHead.objects.get_or_create(pk=1)
        head = AuditChainHead.objects.select_for_update(no_key=True).get(pk=1)
    return head


def new_event(
    *,
    action: str,
    subject: models.Model | None = None,
    subject_type: str | None = None,
    subject_id: str | int | None = None,
    subject_repr: str | None = None,
    actor=None,
    before=None,
    after=None,
    reason: str = "",
    token_id: int | None = None,
) -> AuditEvent:
    """The event record() appends, not yet linked (no seq, time, prev_hash or hash): actor and request from the
    context unless given, payloads redacted and in canonical JSON text."""
    if subject is not None:
        subject_type = subject_type or subject._meta.label_lower
        subject_id = subject.pk if subject_id is None else subject_id
        subject_repr = str(subject) if subject_repr is None else subject_repr
    if not subject_type or subject_id is None:
        raise ValueError("audit.record() needs a subject or subject_type and subject_id")
    actor = actor if actor is not None else context.actor.get()
    # actor: a user, or a string naming a system actor ("system:reconciler", "cli:create_api_token")
    is_user = actor is not None and not isinstance(actor, str) and actor.is_authenticated
    return AuditEvent(
        actor_id=actor.pk if is_user else None,
        actor_username=actor.get_username() if is_user else (actor if isinstance(actor, str) else ""),
        token_id=token_id if token_id is not None else context.token_id.get(),
        request_id=context.request_id.get(),
        action=action,
        subject_type=subject_type,
        subject_id=str(subject_id),
        subject_repr=subject_text(subject_repr or ""),
        before=_to_json_text(before),
        after=_to_json_text(after),
        reason=mask_secrets(reason or ""),
    )


def record(**fields) -> AuditEvent:
    """Append one event (fields: those of new_event()) to the chain. Must run inside the caller's transaction.

    The chain head row is locked until the caller commits, so concurrent writers queue and the
    event commits or rolls back together with the change it describes. On PostgreSQL the database
    links the event (seq, time, prev_hash, hash) as it is inserted; elsewhere this function does. The
    time is taken once the head is held, so times never decrease along the chain.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("audit.record() must be called inside transaction.atomic()")
    event = new_event(**fields)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(*insert_sql(event))
            linked(event, *cursor.fetchone())
    else:
        _link_in_python(event)
    return event


RECORD_MANY_BATCH = 1000  # events per INSERT: 11 parameters each, well under PostgreSQL's 65,535


def record_many(events: list[dict]) -> list[AuditEvent]:
    """Append many events (each the fields of new_event()), in order, as record() would one by one, but in one
    statement per RECORD_MANY_BATCH events on PostgreSQL: for a change that touches a number of objects only the
    data bounds (a group's deletion and every object it was granted). Must run inside the caller's transaction."""
    if not connection.in_atomic_block:
        raise RuntimeError("audit.record_many() must be called inside transaction.atomic()")
    stored = [new_event(**fields) for fields in events]
    if connection.vendor != "postgresql":
        for event in stored:
            _link_in_python(event)
        return stored
    for start in range(0, len(stored), RECORD_MANY_BATCH):
        batch = stored[start : start + RECORD_MANY_BATCH]
        rows = [_values_sql(event) for event in batch]
        sql = f"{_INSERT_INTO} VALUES {', '.join(values for values, _ in rows)} RETURNING seq, at, prev_hash, hash"
        with connection.cursor() as cursor:
            cursor.execute(sql, [param for _, params in rows for param in params])
            # the trigger links the rows in the order of VALUES, so the sequence numbers follow that order
            for event, links in zip(batch, sorted(cursor.fetchall()), strict=True):
                linked(event, *links)
    return stored


def json_text_around(value: dict, key: str) -> tuple[str, str]:
    """The canonical JSON text of `value` (as new_event() writes a payload) cut where value[key] goes: for a
    statement that fills in a value only the database knows (prefix || value || suffix)."""
    if secret_name(key):  # redact() would drop the value, and the hole with it
        raise ValueError(f"json_text_around: '{key}' names a secret, whose value the audit log never holds")
    hole = f"hole-{secrets.token_hex(16)}"
    prefix, suffix = _to_json_text({**value, key: hole}).split(f'"{hole}"')
    return prefix, suffix


_LINKED_FIELDS = ("seq", "at", "prev_hash", "hash", "line")  # what linking sets, whatever the INSERT says
_GIVEN_FIELDS = [f for f in AuditEvent._meta.concrete_fields if f.attname not in _LINKED_FIELDS]
_INSERT_INTO = f"INSERT INTO {AuditEvent._meta.db_table} ({', '.join(f.column for f in _GIVEN_FIELDS)})"


def insert_sql(event: AuditEvent, computed: dict[str, tuple[str, list]] | None = None) -> tuple[str, list]:
    """PostgreSQL: the INSERT of an unlinked event, returning its links (see linked()); the chain-link trigger
    (migrations 0003, 0005, 0007) locks the head, assigns seq, time and prev_hash, computes the hash, stores the
    export line and moves the head. `computed` gives columns by name as SQL expressions with their parameters, for an
    INSERT that is part of a larger statement (values another part of it produces)."""
    values, params = _values_sql(event, computed)
    return f"{_INSERT_INTO} VALUES {values} RETURNING seq, at, prev_hash, hash", params


def _values_sql(event: AuditEvent, computed: dict[str, tuple[str, list]] | None = None) -> tuple[str, list]:
    """The event's row for _INSERT_INTO, `(…)`, with its parameters."""
    computed = computed or {}
    values, params = [], []
    for field in _GIVEN_FIELDS:
        if field.attname in computed:
            sql, more = computed[field.attname]
            values.append(sql)
            params += more
        else:
            values.append("%s")
            params.append(field.get_db_prep_save(getattr(event, field.attname), connection))
    return f"({', '.join(values)})", params


def linked(event: AuditEvent, seq: int, at, prev_hash: str, digest: str) -> AuditEvent:
    """The event, stored, with the links insert_sql() returned (its stored `line` is not read back)."""
    event.seq, event.at, event.prev_hash, event.hash = seq, at, prev_hash, digest
    event._state.adding = False
    event._state.db = connection.alias
    # As the ORM's save() would: listeners of new audit events (the test suite's secret scan) see it.
    post_save.send(
        sender=AuditEvent, instance=event, created=True, update_fields=None, raw=False, using=connection.alias
    )
    return event


def _link_in_python(event: AuditEvent) -> None:
    """SQLite: lock the head (the write lock is the database's), link, insert with the export line, move the head."""
    head = _lock_head()
    event.seq = head.seq + 1
    event.at = max(timezone.now(), head.at) if head.at else timezone.now()
    event.prev_hash = head.hash
    event.hash = event.computed_hash()
    event.line = event.export_line()
    event.save(force_insert=True)
    AuditChainHead.objects.filter(pk=1).update(seq=event.seq, hash=event.hash, at=event.at)


def snapshot(instance: models.Model, fields: list[str]) -> dict:
    """A JSON-safe dict of the named fields, for before/after payloads."""
    return {name: getattr(instance, name) for name in fields}
