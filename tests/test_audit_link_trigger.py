"""On PostgreSQL the database links each inserted audit event into the chain (migration 0003): the
hash it computes is audit/chain.py's, byte for byte, and an INSERT cannot choose its own links."""

import io
from datetime import timedelta
from importlib import import_module

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from audit import chain
from audit.models import AuditChainHead, AuditEvent
from audit.services import record
from tests.test_audit_export import TRICKY

pytestmark = pytest.mark.django_db


def python_hash(event: AuditEvent) -> str:
    return chain.event_hash(event.prev_hash, event.as_chain_dict())


def set_head_time(at) -> None:
    """Set the head's time the way a DBA could: with its guard (migration 0008) switched off."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditchainhead DISABLE TRIGGER audit_head_guard")
        cursor.execute("UPDATE audit_auditchainhead SET at = %s WHERE id = 1", [at])
        cursor.execute("ALTER TABLE audit_auditchainhead ENABLE TRIGGER audit_head_guard")


def test_the_database_hash_is_the_python_definition_for_every_character_class():
    assert connection.vendor == "postgresql"
    recorded = []
    with transaction.atomic():
        for n, text in enumerate(TRICKY):
            recorded.append(
                record(
                    action=f"tricky.{n}",
                    subject_type="t",
                    subject_id=text[:200] or "0",
                    subject_repr=text[:300],
                    actor="system:test",
                    token_id=n or None,
                    reason=text,
                    before={"text": text, "numbers": [1, -2.5, 1e-7, 10**20], "flag": False},
                    after=None if n % 2 else {"nested": {"b": text[:10], "a": None}},
                )
            )
    stored = list(AuditEvent.objects.order_by("seq"))
    assert [e.seq for e in stored] == [e.seq for e in recorded] == list(range(1, len(TRICKY) + 1))
    for returned, row in zip(recorded, stored, strict=True):
        assert (returned.prev_hash, returned.hash) == (row.prev_hash, row.hash)  # record() returns the links
        assert row.hash == python_hash(row)
    assert stored[0].prev_hash == chain.GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(stored, stored[1:], strict=False))
    head = AuditChainHead.objects.get(pk=1)
    assert (head.seq, head.hash) == (stored[-1].seq, stored[-1].hash)


def test_an_insert_cannot_choose_its_own_links():
    """Raw SQL naming a forged sequence number, hashes and export line is linked like any other event."""
    with transaction.atomic():
        first = record(action="a", subject_type="t", subject_id="1", actor="system:test")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_auditevent (seq, at, actor_username, request_id, action, subject_type, subject_id,"
            " subject_repr, before, after, reason, prev_hash, hash, line)"
            " VALUES (99, '2000-01-01Z', 'mallory', '', 'forged', 't', '2', '', 'null', 'null', '', %s, %s, %s)"
            " RETURNING seq, prev_hash, hash",
            [chain.GENESIS, "f" * 64, '{"action":"harmless"}'],
        )
        seq, prev_hash, digest = cursor.fetchone()
    assert (seq, prev_hash) == (2, first.hash)
    forged = AuditEvent.objects.get(seq=2)
    assert forged.at >= first.at  # nor its time
    assert digest == python_hash(forged) != "f" * 64
    assert forged.line == forged.export_line()  # nor its export line
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert out.getvalue().startswith("OK: 2 audit events verified")


def test_a_flushed_log_starts_again_at_genesis():
    """A database flushed by TRUNCATE (tests, a fresh install) has no head row: the trigger makes it."""
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE audit_auditevent, audit_auditchainhead")
    with transaction.atomic():
        event = record(action="a", subject_type="t", subject_id="1", actor="system:test")
    assert (event.seq, event.prev_hash) == (1, chain.GENESIS)
    assert AuditChainHead.objects.get(pk=1).hash == event.hash == python_hash(event)


def test_a_rolled_back_insert_leaves_the_head_where_it_was():
    with transaction.atomic():
        kept = record(action="a", subject_type="t", subject_id="1", actor="system:test")
    with pytest.raises(RuntimeError), transaction.atomic():
        record(action="b", subject_type="t", subject_id="2", actor="system:test")
        raise RuntimeError("the change this event described failed")
    head = AuditChainHead.objects.get(pk=1)
    assert (head.seq, head.hash) == (kept.seq, kept.hash)
    with transaction.atomic():
        assert record(action="c", subject_type="t", subject_id="3", actor="system:test").seq == kept.seq + 1


@pytest.mark.parametrize(
    "tables", ["audit_auditevent", "audit_auditchainhead", "audit_auditevent, audit_auditchainhead"]
)
def test_truncate_is_refused_unless_the_session_allows_it(tables):
    """TRUNCATE fires no row trigger; a statement trigger refuses it (the test suite allows it for its flush)."""
    from django.db import IntegrityError

    with transaction.atomic():
        record(action="a", subject_type="t", subject_id="1", actor="system:test")
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL registry.allow_truncate = off")
        cursor.execute(f"TRUNCATE {tables}")
    assert AuditEvent.objects.count() == 1 and AuditChainHead.objects.get(pk=1).seq == 1


def test_an_event_is_never_earlier_than_the_one_before_even_if_the_clock_steps_back():
    """The time is taken with the head held, and a clock stepped back (NTP, a restored VM) cannot make it
    go backwards along the chain: an export filtered by time stays one contiguous run of sequence numbers."""
    with transaction.atomic():
        first = record(action="a", subject_type="t", subject_id="1", actor="system:test")
    assert AuditChainHead.objects.get(pk=1).at == first.at
    ahead = first.at + timedelta(hours=1)  # as if the clock had been an hour fast when the last event was linked
    set_head_time(ahead)
    with transaction.atomic():
        second = record(action="b", subject_type="t", subject_id="2", actor="system:test")
    with transaction.atomic():
        third = record(action="c", subject_type="t", subject_id="3", actor="system:test")
    stored = {e.seq: e for e in AuditEvent.objects.all()}
    assert second.at == stored[2].at == ahead  # record() returns the stored time
    assert third.at == stored[3].at == ahead
    assert stored[3].hash == python_hash(stored[3])
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert out.getvalue().startswith("OK: 3 audit events verified")


def test_the_migration_starts_the_heads_time_at_the_latest_event():
    """Migration 0007 on a log that already has events: the head's time starts at the latest one, so the
    first event linked after the upgrade is not earlier than any before it."""
    from django.apps import apps

    migration = import_module("audit.migrations.0007_event_time_follows_chain")
    with transaction.atomic():
        record(action="a", subject_type="t", subject_id="1", actor="system:test")
        last = record(action="b", subject_type="t", subject_id="2", actor="system:test")
    set_head_time(None)  # a head as the migration finds it
    with connection.schema_editor() as editor:
        editor.execute("ALTER TABLE audit_auditchainhead DISABLE TRIGGER audit_head_guard")  # 0008 comes later
        migration.forwards(apps, editor)
        editor.execute("ALTER TABLE audit_auditchainhead ENABLE TRIGGER audit_head_guard")
    assert AuditChainHead.objects.get(pk=1).at == last.at
    with transaction.atomic():
        after = record(action="c", subject_type="t", subject_id="3", actor="system:test")
    assert after.at >= last.at and after.hash == python_hash(AuditEvent.objects.get(seq=after.seq))


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_auditchainhead SET seq = seq - 1",  # back: the next event would re-use a sequence number
        "UPDATE audit_auditchainhead SET seq = seq + 1",  # one step, but not by linking an event
        "UPDATE audit_auditchainhead SET hash = repeat('a', 64)",  # the next event would link to no event
        "UPDATE audit_auditchainhead SET at = at - interval '1 day'",
        "UPDATE audit_auditchainhead SET id = 2",
        "DELETE FROM audit_auditchainhead",
    ],
    ids=["back", "step", "hash", "time", "id", "delete"],
)
def test_only_linking_an_event_moves_the_head(sql):
    """A stray statement on the head would fork the chain; only the chain-link trigger moves it (0008)."""
    from django.db import IntegrityError

    with transaction.atomic():
        first = record(action="a", subject_type="t", subject_id="1", actor="system:test")
    with pytest.raises(IntegrityError, match="moves only by appending"), transaction.atomic():
        connection.cursor().execute(sql)
    with pytest.raises(IntegrityError, match="moves only by appending"), transaction.atomic():
        AuditChainHead.objects.filter(pk=1).update(seq=first.seq + 1)  # the ORM is refused as well
    head = AuditChainHead.objects.get(pk=1)
    assert (head.seq, head.hash, head.at) == (first.seq, first.hash, first.at)
    with transaction.atomic():
        second = record(action="b", subject_type="t", subject_id="2", actor="system:test")
    assert (second.seq, second.prev_hash) == (2, first.hash)
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert out.getvalue().startswith("OK: 2 audit events verified")
