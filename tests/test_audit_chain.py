"""The audit log is append-only in the database and hash-chained; both verifiers catch tampering."""

import hashlib
import io
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction

from accounts import roles, services
from audit import chain
from audit.models import AuditChainHead, AuditEvent
from audit.services import record
from tests.conftest import bearer

ROOT = Path(__file__).resolve().parent.parent
CHAIN_SCRIPT = ROOT / "audit" / "chain.py"
APPEND_ONLY = "audit events are append-only"
HEAD_MOVES = "the audit chain head moves only by appending an audit event"


def system_python() -> str:
    """The interpreter under the project's venv, preferably the system's. The verifier must run with the
    standard library alone: callers pass -I -S (no site-packages, no environment, not the script's
    directory), which holds whichever interpreter this is, also when the venv was made from this one."""
    for candidate in ("/usr/bin/python3", shutil.which("python3", path=os.defpath), sys._base_executable):
        if candidate and Path(candidate).exists():
            return candidate
    raise AssertionError("no python3 found")


def assert_chain_links(events: list[AuditEvent]) -> None:
    prev = chain.GENESIS
    for expected_seq, event in enumerate(events, start=1):
        assert event.seq == expected_seq
        assert event.prev_hash == prev, f"event {event.seq} does not link to {expected_seq - 1}"
        assert event.hash == event.computed_hash()
        prev = event.hash


def record_test_event(n: int, **kwargs) -> AuditEvent:
    return record(action="test.event", subject_type="test", subject_id=str(n), actor="system:test", **kwargs)


# --- concurrency ----------------------------------------------------------------------------

THREADS, PER_THREAD = 8, 200


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_one_gapless_chain():
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def writer(thread: int) -> None:
        try:
            start.wait()
            for i in range(PER_THREAD):
                with transaction.atomic():
                    record(
                        action="test.concurrent",
                        subject_type="thread",
                        subject_id=f"{thread}:{i}",
                        actor=f"system:thread-{thread}",
                        after={"thread": thread, "i": i},
                    )
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "writers hung"
    assert not errors, errors

    events = list(AuditEvent.objects.order_by("seq"))
    total = THREADS * PER_THREAD
    assert [e.seq for e in events] == list(range(1, total + 1))
    assert_chain_links(events)
    assert len({e.hash for e in events}) == total
    # times follow the chain, so a since/until export is one contiguous run of sequence numbers
    assert [e.at for e in events] == sorted(e.at for e in events)
    # every call landed exactly once, and each thread's events are in the order it wrote them
    assert sorted(e.subject_id for e in events) == sorted(f"{t}:{i}" for t in range(THREADS) for i in range(PER_THREAD))
    for t in range(THREADS):
        mine = [int(e.subject_id.split(":")[1]) for e in events if e.subject_id.startswith(f"{t}:")]
        assert mine == list(range(PER_THREAD))
    head = AuditChainHead.objects.get(pk=1)
    assert (head.seq, head.hash) == (total, events[-1].hash)

    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert f"OK: {total} audit events verified" in out.getvalue()


# --- transactions ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_record_outside_a_transaction_raises():
    assert not connection.in_atomic_block
    with pytest.raises(RuntimeError, match="inside transaction.atomic"):
        record_test_event(1)
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_leaves_no_event_and_no_gap():
    with transaction.atomic():
        first = record_test_event(1)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        rolled_back = record_test_event(2)
        assert rolled_back.seq == 2
        raise Boom

    assert list(AuditEvent.objects.values_list("seq", flat=True)) == [1]
    assert AuditChainHead.objects.get(pk=1).hash == first.hash
    with transaction.atomic():
        third = record_test_event(3)
    assert third.seq == 2
    assert third.prev_hash == first.hash
    assert_chain_links(list(AuditEvent.objects.order_by("seq")))
    call_command("audit_verify", stdout=io.StringIO())


# --- append-only in the database ------------------------------------------------------------


@pytest.fixture
def three_events(db) -> list[AuditEvent]:
    return [record_test_event(n, after={"n": n}) for n in (1, 2, 3)]


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_auditevent SET reason = 'rewritten' WHERE seq = 2",
        "UPDATE audit_auditevent SET reason = reason",
        "UPDATE audit_auditevent SET hash = hash, prev_hash = prev_hash WHERE seq = 3",
        "DELETE FROM audit_auditevent WHERE seq = 3",
        "DELETE FROM audit_auditevent",
    ],
)
def test_raw_sql_update_and_delete_rejected_on_postgresql(three_events, sql):
    assert connection.vendor == "postgresql"
    with pytest.raises(IntegrityError, match=APPEND_ONLY), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)
    assert [e.reason for e in AuditEvent.objects.order_by("seq")] == ["", "", ""]
    assert_chain_links(list(AuditEvent.objects.order_by("seq")))


def test_orm_update_and_delete_rejected(three_events):
    event = three_events[1]
    event.reason = "rewritten"
    with pytest.raises(IntegrityError, match=APPEND_ONLY), transaction.atomic():
        event.save()
    with pytest.raises(IntegrityError, match=APPEND_ONLY), transaction.atomic():
        AuditEvent.objects.filter(seq=1).update(action="x")
    with pytest.raises(IntegrityError, match=APPEND_ONLY), transaction.atomic():
        AuditEvent.objects.filter(seq=3).delete()
    assert AuditEvent.objects.count() == 3
    assert AuditEvent.objects.get(seq=2).reason == ""


def test_raw_sql_update_and_delete_rejected_on_sqlite(sqlite_shell):
    script = (
        "from django.core.management import call_command\n"
        "from django.db import transaction\n"
        "from audit.services import record\n"
        "with transaction.atomic():\n"
        "    record(action='test.sqlite', subject_type='test', subject_id='1', actor='system:test', after={'a': 1})\n"
        "    record(action='test.sqlite', subject_type='test', subject_id='2', actor='system:test')\n"
        "call_command('audit_verify')\n"  # read back from SQLite, the chain still verifies
    )
    printed, db_file = sqlite_shell(script)
    assert "OK: 2 audit events verified" in printed

    db = sqlite3.connect(db_file)
    try:
        assert db.execute("SELECT seq, action FROM audit_auditevent ORDER BY seq").fetchall() == [
            (1, "test.sqlite"),
            (2, "test.sqlite"),
        ]
        for sql in (
            "UPDATE audit_auditevent SET reason = 'rewritten' WHERE seq = 1",
            "UPDATE audit_auditevent SET after = '{}'",
            "DELETE FROM audit_auditevent WHERE seq = 2",
            "DELETE FROM audit_auditevent",
        ):
            with pytest.raises(sqlite3.IntegrityError, match=APPEND_ONLY):
                db.execute(sql)
            db.rollback()
        assert db.execute("SELECT count(*), min(reason), max(reason) FROM audit_auditevent").fetchone() == (2, "", "")
        head = db.execute("SELECT seq, hash, at FROM audit_auditchainhead").fetchall()
        for sql in (
            "UPDATE audit_auditchainhead SET seq = 1",  # back: the next event would re-use seq 2
            f"UPDATE audit_auditchainhead SET seq = 3, hash = '{'a' * 64}'",  # ahead, to no stored event
            "UPDATE audit_auditchainhead SET at = '2000-01-01 00:00:00'",
            "DELETE FROM audit_auditchainhead",
        ):
            with pytest.raises(sqlite3.IntegrityError, match=HEAD_MOVES):
                db.execute(sql)
            db.rollback()
        assert db.execute("SELECT seq, hash, at FROM audit_auditchainhead").fetchall() == head
        assert head[0][0] == 2
    finally:
        db.close()


def test_event_times_follow_the_chain_on_sqlite(sqlite_shell):
    """SQLite links in Python: the time is taken with the head held, never earlier than the head's."""
    script = (
        "from datetime import timedelta\n"
        "from unittest import mock\n"
        "from django.core.management import call_command\n"
        "from django.db import transaction\n"
        "from django.utils import timezone\n"
        "from audit.models import AuditChainHead\n"
        "from audit.services import record\n"
        "ahead = timezone.now() + timedelta(hours=1)\n"
        "with mock.patch('django.utils.timezone.now', return_value=ahead), transaction.atomic():\n"  # a fast clock
        "    first = record(action='test.sqlite', subject_type='test', subject_id='1', actor='system:test')\n"
        "assert AuditChainHead.objects.get(pk=1).at == first.at == ahead\n"
        "with transaction.atomic():\n"
        "    second = record(action='test.sqlite', subject_type='test', subject_id='2', actor='system:test')\n"
        "assert second.at == ahead, (second.at, ahead)\n"
        "call_command('audit_verify')\n"
    )
    printed, _ = sqlite_shell(script)
    assert "OK: 2 audit events verified" in printed


# --- audit_verify on the stored chain -------------------------------------------------------


@pytest.fixture
def five_events(db) -> list[AuditEvent]:
    return [record_test_event(n, after={"n": n}) for n in range(1, 6)]


def tamper(*statements: tuple[str, list]) -> None:
    """Rewrite history the way a DBA could: with the append-only triggers switched off."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        for sql, params in statements:
            cursor.execute(sql, params)
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")


def test_audit_verify_passes_on_an_intact_chain(five_events):
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert out.getvalue().strip() == f"OK: 5 audit events verified; head {five_events[-1].hash}"


@pytest.mark.parametrize(
    ("statements", "bad_seq"),
    [
        ([("UPDATE audit_auditevent SET reason = %s WHERE seq = 3", ["forged"])], 3),
        ([("UPDATE audit_auditevent SET after = %s WHERE seq = 1", ['{"n":100}'])], 1),
        ([("UPDATE audit_auditevent SET actor_username = %s WHERE seq = 5", ["mallory"])], 5),
        ([("UPDATE audit_auditevent SET at = at + interval '1 second' WHERE seq = 2", [])], 2),
        ([("DELETE FROM audit_auditevent WHERE seq = 3", [])], 4),
        ([("DELETE FROM audit_auditevent WHERE seq = 1", [])], 2),
    ],
    ids=["reason", "payload", "actor", "time", "delete-middle", "delete-first"],
)
def test_audit_verify_detects_a_tampered_row(five_events, statements, bad_seq):
    tamper(*statements)
    with pytest.raises(CommandError, match=rf"audit chain broken at sequence {bad_seq} \(line"):
        call_command("audit_verify", stdout=io.StringIO())


def test_audit_verify_detects_a_rehashed_row(five_events):
    """Recomputing the changed row's own hash does not help: the next event still links to the old one."""
    forged = AuditEvent.objects.get(seq=3)
    forged.reason = "forged"
    forged.hash = forged.computed_hash()
    tamper(
        (
            "UPDATE audit_auditevent SET reason = %s, hash = %s, line = %s WHERE seq = 3",
            ["forged", forged.hash, forged.export_line()],
        )
    )
    with pytest.raises(CommandError, match=r"sequence 4 \(line 4\): prev_hash does not match"):
        call_command("audit_verify", stdout=io.StringIO())


def test_audit_verify_detects_events_removed_from_the_end(five_events):
    tamper(("DELETE FROM audit_auditevent WHERE seq >= 4", []))
    with pytest.raises(CommandError, match=r"head says #5 .* log ends at #3"):
        call_command("audit_verify", stdout=io.StringIO())


@pytest.mark.parametrize("sql", ["DELETE FROM audit_auditevent", "TRUNCATE audit_auditevent"])
def test_audit_verify_detects_every_event_removed(five_events, sql):
    """TRUNCATE fires no row trigger; the chain head still remembers how long the log was."""
    if sql.startswith("TRUNCATE"):
        with connection.cursor() as cursor:
            cursor.execute(sql)
    else:
        tamper((sql, []))
    assert not AuditEvent.objects.exists()
    with pytest.raises(CommandError, match=r"head says #5 .* log ends at #0"):
        call_command("audit_verify", stdout=io.StringIO())


# --- the standalone verifier on a real export -----------------------------------------------


@pytest.fixture
def exported(db) -> tuple[list[bytes], str]:
    """An NDJSON export of a varied log, fetched through the API as an auditor."""
    groups = roles.ensure_roles()
    auditor = get_user_model().objects.create_user(username="auditor-x", password=None)
    auditor.groups.add(groups[roles.AUDITORS])
    token = services.token_create(actor="test", user=auditor, name="audit", scopes=["audit:read"]).plaintext
    record(
        action="test.unicode",
        subject_type="registry.modelversion",
        subject_id="ü-1",
        subject_repr="Modèle «α» 🚀",
        actor=auditor,
        before={"stage": None},
        after={"metrics": {"acc": 0.9137, "n": 3, "big": 10**18}, "tags": ["a", "b"], "ok": True},
        reason='line one\nline two, "quoted"',
    )
    for n in range(4):
        record_test_event(n, after={"n": n}, reason=f"r{n}")
    response = bearer(token).get("/api/v1/audit/events")
    assert response.status_code == 200
    assert response.streaming
    lines = b"".join(response.streaming_content).splitlines(keepends=True)
    assert len(lines) == AuditEvent.objects.count() >= 8
    assert response["X-Audit-Last-Seq"] == str(len(lines))
    return lines, response["X-Audit-Last-Hash"]


def run_verifier(tmp_path: Path, lines: list[bytes], *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "verifier" / "chain.py"  # a copy, away from the project, as an auditor would run it
    script.parent.mkdir(exist_ok=True)
    shutil.copyfile(CHAIN_SCRIPT, script)
    export = tmp_path / "export.ndjson"
    export.write_bytes(b"".join(lines))
    # -I: ignore PYTHON* variables and user site; -S: no site-packages at all, the standard library only
    return subprocess.run(
        [system_python(), "-I", "-S", str(script), str(export), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )


def assert_fails_at(result: subprocess.CompletedProcess, seq: int, line: int | None = None) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    where = f"FAIL: sequence {seq} (line {line})" if line is not None else f"FAIL: sequence {seq}"
    assert result.stderr.startswith(where), result.stderr
    assert "OK" not in result.stdout


def test_standalone_verifier_accepts_the_export(exported, tmp_path):
    lines, head = exported
    result = run_verifier(tmp_path, lines, "--expect-head", head)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"OK: {len(lines)} events verified; last hash {head}"


def test_standalone_verifier_reads_stdin(exported, tmp_path):
    lines, _ = exported
    script = tmp_path / "chain.py"
    shutil.copyfile(CHAIN_SCRIPT, script)
    result = subprocess.run(
        [system_python(), "-I", "-S", str(script), "-"], input=b"".join(lines), capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK: {len(lines)} events verified".encode())


def test_standalone_verifier_reads_stdin_as_utf8_whatever_the_locale(exported, tmp_path):
    """An export is UTF-8: read from stdin under another encoding (PYTHONIOENCODING, Windows' cp1252), its events
    holding non-ASCII text (the fixture's "Modèle «α» 🚀") failed as changed."""
    lines, _ = exported
    script = tmp_path / "chain.py"
    shutil.copyfile(CHAIN_SCRIPT, script)
    for encoding in ("latin-1", "cp1252"):
        result = subprocess.run(
            [system_python(), "-S", str(script), "-"],
            input=b"".join(lines),
            capture_output=True,
            timeout=30,
            env={**os.environ, "PYTHONIOENCODING": encoding},
        )
        assert result.returncode == 0, (encoding, result.stderr)
        assert result.stdout.startswith(f"OK: {len(lines)} events verified".encode())


@pytest.mark.parametrize("line", ["\u00a0\u2028\u3000\n", "\x1c\x1d\n"], ids=["unicode spaces", "separators"])
def test_a_line_of_unicode_whitespace_is_not_skipped(exported, tmp_path, line):
    """Only ASCII blank lines are skipped: a line str.strip() would call blank is no part of an export."""
    lines, _ = exported
    forged = [*lines[:2], line.encode(), *lines[2:]]
    result = run_verifier(tmp_path, forged)
    assert result.returncode == 1, result.stdout
    assert "line 3" in result.stderr and "OK" not in result.stdout, result.stderr


def _flip_hex(value: str) -> str:
    return ("1" if value[0] != "1" else "2") + value[1:]


CHANGES = {
    "seq": lambda e: e["seq"] + 100,
    "at": lambda e: e["at"][:-3] + ("9" if e["at"][-3] != "9" else "8") + e["at"][-2:],
    "actor_username": lambda e: (e["actor_username"] or "") + "x",
    "token_id": lambda e: (e["token_id"] or 0) + 1,
    "action": lambda e: e["action"] + ".forged",
    "subject_id": lambda e: e["subject_id"] + "0",
    "subject_repr": lambda e: e["subject_repr"] + " ",
    "before": lambda e: {"forged": True},
    "after": lambda e: None if e["after"] is not None else {},
    "reason": lambda e: "forged",
    "prev_hash": lambda e: _flip_hex(e["prev_hash"]),
    "hash": lambda e: _flip_hex(e["hash"]),
}


@pytest.mark.parametrize("position", ["first", "middle", "last"])
@pytest.mark.parametrize("field", sorted(CHANGES))
def test_standalone_verifier_detects_a_changed_line(exported, tmp_path, field, position):
    lines, head = exported
    index = {"first": 0, "middle": len(lines) // 2, "last": len(lines) - 1}[position]
    event = json.loads(lines[index])
    original_seq = event["seq"]
    event[field] = CHANGES[field](event)
    assert json.loads(lines[index])[field] != event[field]
    lines = [*lines[:index], chain.canonical_json(event) + b"\n", *lines[index + 1 :]]
    result = run_verifier(tmp_path, lines)
    assert_fails_at(result, event["seq"], index + 1)
    if field != "seq":
        assert event["seq"] == original_seq


def test_standalone_verifier_detects_a_changed_value_kept_equal_in_python(exported, tmp_path):
    """1 and 1.0 compare equal in Python but are different bytes in the hashed JSON."""
    lines, _ = exported
    index = next(i for i, raw in enumerate(lines) if json.loads(raw)["after"] == {"n": 1})
    lines[index] = lines[index].replace(b'"after":{"n":1}', b'"after":{"n":1.0}')
    assert b"1.0" in lines[index]
    assert_fails_at(run_verifier(tmp_path, lines), json.loads(lines[index])["seq"], index + 1)


@pytest.mark.parametrize("position", ["first", "middle"])
def test_standalone_verifier_detects_a_removed_line(exported, tmp_path, position):
    lines, head = exported
    index = 0 if position == "first" else len(lines) // 2
    removed_seq = json.loads(lines[index])["seq"]
    result = run_verifier(tmp_path, [*lines[:index], *lines[index + 1 :]], "--expect-head", head)
    assert_fails_at(result, removed_seq + 1, index + 1)
    assert f"expected sequence {removed_seq}" in result.stderr


def test_standalone_verifier_detects_a_removed_last_line_with_the_head(exported, tmp_path):
    lines, head = exported
    last_seq = json.loads(lines[-1])["seq"]
    unchecked = run_verifier(tmp_path, lines[:-1])
    assert unchecked.returncode == 0, "without the published head, a truncated export cannot be told apart"
    result = run_verifier(tmp_path, lines[:-1], "--expect-head", head)
    assert_fails_at(result, last_seq)
    assert f"ends at sequence {last_seq - 1}" in result.stderr


@pytest.mark.parametrize("how", ["swap-first-two", "swap-middle", "last-first", "reverse"])
def test_standalone_verifier_detects_reordered_lines(exported, tmp_path, how):
    lines, head = exported
    middle = len(lines) // 2
    reordered = list(lines)
    if how == "swap-first-two":
        reordered[0], reordered[1] = reordered[1], reordered[0]
    elif how == "swap-middle":
        reordered[middle], reordered[middle + 1] = reordered[middle + 1], reordered[middle]
    elif how == "last-first":
        reordered = [reordered[-1], *reordered[:-1]]
    else:
        reordered.reverse()
    first_bad = next(i for i, (a, b) in enumerate(zip(lines, reordered, strict=True)) if a != b)
    result = run_verifier(tmp_path, reordered, "--expect-head", head)
    assert_fails_at(result, json.loads(reordered[first_bad])["seq"], first_bad + 1)


def test_standalone_verifier_detects_a_duplicated_line(exported, tmp_path):
    lines, _ = exported
    index = len(lines) // 2
    result = run_verifier(tmp_path, [*lines[: index + 1], lines[index], *lines[index + 1 :]])
    assert_fails_at(result, json.loads(lines[index])["seq"], index + 2)


def test_standalone_verifier_names_the_line_of_broken_json(exported, tmp_path):
    lines, _ = exported
    lines[2] = lines[2][:-10] + b"\n"
    result = run_verifier(tmp_path, lines)
    assert result.returncode == 1
    assert result.stderr.startswith("FAIL: line 3: not valid JSON"), result.stderr


def test_standalone_verifier_usage_errors_exit_2(tmp_path):
    result = subprocess.run(
        [system_python(), "-I", "-S", str(CHAIN_SCRIPT), str(tmp_path / "missing.ndjson")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "cannot read" in result.stderr


# --- the fast path over raw lines: same verdicts as verify_events() ---------------------------
#
# audit/chain.py hashes a canonical line's raw bytes (the line minus its hash members) instead of
# re-serializing the event, but only after proving the line canonical; everything else goes through
# verify_events()'s own checks. These tests pin both halves: canonical lines take the fast path, and
# every other line gets verify_events()'s verdict, message and sequence number, including lines
# forged to fool a fast path that would hash raw bytes without that proof.

MEMBERS = re.compile(rb'"hash":"([0-9a-f]{64})","prev_hash":"([0-9a-f]{64})",?')


def synthetic_lines(count: int, start: int = 1, prev: str = chain.GENESIS, **overrides) -> list[bytes]:
    """Export lines as the registry writes them (canonical JSON of the event with prev_hash and hash)."""
    lines = []
    for seq in range(start, start + count):
        event = {
            "seq": seq,
            "at": f"2026-01-01T00:00:{seq % 60:02d}.000000Z",
            "actor_id": 7,
            "actor_username": "bench:bulk",
            "token_id": None,
            "request_id": f"req-{seq:012d}",
            "action": "version.registered",
            "subject_type": "registry.modelversion",
            "subject_id": str(seq),
            "subject_repr": f"fraud/{seq}",
            "before": {"status": "registered"} if seq % 3 else None,
            "after": {"metrics": {"auc": (seq % 1000) / 1000, "n": seq}, "tags": ["a", "b"], "note": "x" * 200},
            "reason": "",
            **overrides,
        }
        event["hash"] = chain.event_hash(prev, event)
        event["prev_hash"] = prev
        lines.append(chain.canonical_json(event) + b"\n")
        prev = event["hash"]
    return lines


def reference_verdict(lines: list[bytes], **kwargs) -> str:
    """What verify_events() (the definition, which re-serializes every event) says about these lines, each read by
    parse_line() (json.loads, refusing a repeated key, which no dict can show), in turn."""
    events = (chain.parse_line(line.decode(), n) for n, line in enumerate(filter(bytes.strip, lines), start=1))
    try:
        count, head = chain.verify_events(events, **{"from_genesis": True, **kwargs})
    except chain.ChainError as failure:
        return f"FAIL: {failure}"
    return f"OK: {count} events verified; last hash {head}"


def assert_same_verdict(result: subprocess.CompletedProcess, lines: list[bytes], **kwargs) -> str:
    verdict = reference_verdict(lines, **kwargs)
    if verdict.startswith("OK"):
        assert (result.returncode, result.stdout.strip(), result.stderr) == (0, verdict, "")
    else:
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stderr.splitlines()[0] == verdict
        assert "OK" not in result.stdout
    return verdict


def raw_rehash(line: bytes) -> bytes:
    """Give a line the hash of its raw bytes minus its first hash members: the hash a fast path that hashed raw
    bytes without proving them canonical would accept. For a canonical line that is simply its right hash."""
    members = MEMBERS.search(line)
    body = line[: members.start()] + line[members.end() :]
    forged = hashlib.sha256(members[2] + body.rstrip(b"\n")).hexdigest().encode()
    return line[: members.start(1)] + forged + line[members.end(1) :]


def fast_batch(lines: list[bytes]):
    """What the fast path makes of these lines: (seqs, prev_hashes, hashes), or None to check them one by one."""
    lines = [line.rstrip(b"\n") for line in lines]
    return None if any(map(chain._suspect, lines)) else chain._canonical_batch(lines)


def test_canonical_lines_take_the_fast_path(exported):
    lines, head = exported
    canonical = [line for line in lines if not chain._suspect(line.rstrip(b"\n"))]
    assert len(canonical) >= len(lines) - 2  # only the event with quotes and a newline in its reason is held back
    seqs, prev_hashes, hashes = fast_batch(canonical)
    events = [json.loads(line) for line in canonical]
    assert (list(seqs), list(prev_hashes), list(hashes)) == (
        [e["seq"] for e in events],
        [e["prev_hash"] for e in events],
        [e["hash"] for e in events],
    )
    run = chain._scan_block(b"".join(lines), False, "utf-8", "strict")  # the held-back line checked on its own
    assert run == (len(lines), 1, chain.GENESIS, len(lines), head)
    assert (
        chain.verify_lines(lines, from_genesis=True)
        == chain.verify_events(map(json.loads, lines))
        == (
            len(lines),
            head,
        )
    )


@pytest.mark.parametrize(
    "reserialize",
    [
        lambda e: json.dumps(e, sort_keys=True, ensure_ascii=False),  # ", " and ": "
        lambda e: json.dumps({k: e[k] for k in (*chain.EVENT_FIELDS, "prev_hash", "hash")}, separators=(",", ":")),
        lambda e: json.dumps(dict(reversed(e.items())), ensure_ascii=False, separators=(",", ":")),
        lambda e: json.dumps(e, sort_keys=True, separators=(",", ":"), ensure_ascii=True),
        lambda e: " " + json.dumps(e, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\t",
    ],
    ids=["spaces", "unsorted", "unsorted-escaped", "ascii-escaped", "padded"],
)
def test_valid_lines_in_another_form_still_verify(exported, tmp_path, reserialize):
    """An export re-serialized by another tool is not canonical: each line is re-serialized and checked."""
    lines, head = exported
    reformatted = [reserialize(json.loads(line)).encode() + b"\n" for line in lines]
    assert reformatted != lines
    assert all(fast_batch([new]) is None for new, old in zip(reformatted, lines, strict=True) if new != old)
    result = run_verifier(tmp_path, reformatted, "--expect-head", head)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"OK: {len(lines)} events verified; last hash {head}"


def test_crlf_line_ends_verify(exported, tmp_path):
    lines, head = exported
    result = run_verifier(tmp_path, [line.replace(b"\n", b"\r\n") for line in lines], "--expect-head", head)
    assert result.returncode == 0, result.stderr


def _move_members_into_after(line: bytes) -> bytes:
    members = MEMBERS.search(line)
    rest = line[: members.start()] + line[members.end() :]
    return rest.replace(b'"after":{', b'"after":{' + members[0], 1)


def _copy_members_into_a_payload(line: bytes) -> bytes:
    payload = b'"before":{' if b'"before":{' in line else b'"after":{'
    return line.replace(payload, payload + MEMBERS.search(line)[0], 1)


def _members_text_inside_reason(line: bytes) -> bytes:
    forged = MEMBERS.search(line)[0].replace(b'"', b'\\"')  # inside a JSON string, quotes are escaped
    return line.replace(b'"reason":"', b'"reason":"' + forged, 1)


def _members_moved_to_the_end(line: bytes) -> bytes:
    members = MEMBERS.search(line)
    rest = line[: members.start()] + line[members.end() :]
    return rest.rstrip(b"}\n") + b"," + members[0].rstrip(b",") + b"}\n"


def _members_moved_after_the_reason(line: bytes) -> bytes:
    members = MEMBERS.search(line)
    rest = line[: members.start()] + line[members.end() :]
    return rest.replace(b'"reason":"",', b'"reason":"",' + members[0], 1)


TAMPERINGS = {
    "value-in-a-string": lambda line: line.replace(b'"actor_username":"bench:bulk"', b'"actor_username":"bench:bulK"'),
    "value-in-a-nested-object": lambda line: line.replace(b'"tags":["a","b"]', b'"tags":["a","c"]'),
    "spaces": lambda line: line.replace(b'"reason":', b'"reason": '),
    "key-order": lambda line: line.replace(b'"actor_id":7,"actor_username"', b'"actor_username"', 1).replace(
        b'"after"', b'"actor_id":7,"after"', 1
    ),
    "unicode-escape": lambda line: line.replace(b'"bench:bulk"', b'"b\\u0065nch:bulk"'),
    "float-form": lambda line: re.sub(rb'"auc":([0-9.]+)', rb'"auc":\g<1>0', line, count=1),
    "float-exponent": lambda line: re.sub(rb'"n":([0-9]+)', rb'"n":\g<1>e0', line, count=1),
    "float-small-positional": lambda line: re.sub(rb'"auc":[0-9.]+', b'"auc":0.00001', line, count=1),  # 1e-05
    "float-17-digits": lambda line: re.sub(rb'"auc":[0-9.]+', b'"auc":0.10000000000000001', line, count=1),
    "negative-zero": lambda line: line.replace(b'"actor_id":7', b'"actor_id":-0'),
    "duplicate-key": lambda line: line.replace(b'"reason":""', b'"reason":"forged","reason":""'),
    "duplicate-nested-key": lambda line: line.replace(b'"tags":', b'"note":"","tags":'),
    "members-in-after": _move_members_into_after,
    "members-also-in-a-payload": _copy_members_into_a_payload,
    "members-text-in-a-string": _members_text_inside_reason,
    "members-at-the-end": _members_moved_to_the_end,
    "members-after-the-reason": _members_moved_after_the_reason,
    # canonical, and a '"reason":' key after the members, in an object after the top-level reason
    "reason-key-after-the-members": lambda line: line.replace(b'"token_id":null}', b'"token_id":{"reason":null}}'),
    "extra-field": lambda line: line.replace(b'"token_id":null}', b'"token_id":null,"zz":1}'),
    "nested-key-order": lambda line: re.sub(rb'"auc":([0-9.]+),"n":([0-9]+)', rb'"n":\2,"auc":\1', line, count=1),
    "trailing-space": lambda line: line.rstrip(b"\n") + b" \n",
    "seq-as-zero": lambda line: re.sub(rb'"seq":[0-9]+,', b'"seq":0,', line, count=1),
    "seq-as-float": lambda line: re.sub(rb'"seq":([0-9]+)', rb'"seq":\g<1>.0', line, count=1),
    "seq-as-true": lambda line: re.sub(rb'"seq":[0-9]+,', b'"seq":true,', line, count=1),
}


# still canonical JSON, so these do pass the batch (for the seqs, its caller then leaves them to _Chain)
CANONICAL_TAMPERINGS = {
    "value-in-a-string",
    "value-in-a-nested-object",
    "members-text-in-a-string",
    "reason-key-after-the-members",
    "seq-as-true",
    "seq-as-float",
    "seq-as-zero",
}
# not canonical (the members out of place) but valid: once given their hash, verify_events() accepts these
VALID_TAMPERINGS = {"members-after-the-reason"}


def head_of(lines: list[bytes]) -> str:
    """The hash in the last line's members: the head that whoever rehashed the chain up to there would publish."""
    return MEMBERS.search(lines[-1])[1].decode()


@pytest.mark.parametrize("head", [False, True], ids=["no-head", "head-of-the-file"])
@pytest.mark.parametrize("rehash", [False, True], ids=["hash-kept", "raw-bytes-rehashed"])
@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_tampered_lines_get_the_verdict_of_verify_events(tmp_path, tampering, rehash, where, head):
    """With head-of-the-file, --expect-head is the head of the (forged) chain itself, as an attacker who rehashed
    it would publish: the head proves nothing about the lines then, and the verdict stays verify_events()'."""
    lines = synthetic_lines(9)
    index = {"first": 0, "middle": 4, "last": 8}[where]
    tampered = TAMPERINGS[tampering](lines[index])
    assert tampered != lines[index], "the tampering must change the line"
    if rehash:
        tampered = raw_rehash(tampered)
        forged_hash = MEMBERS.search(tampered)[1].decode()  # relink what follows: only this line can be at fault
        lines[index + 1 :] = synthetic_lines(len(lines) - index - 1, start=index + 2, prev=forged_hash)
    lines[index] = tampered
    if tampering not in CANONICAL_TAMPERINGS:
        assert fast_batch([tampered]) is None
    args = ("--expect-head", head_of(lines)) if head else ()
    verdict = assert_same_verdict(run_verifier(tmp_path, lines, *args), lines)
    if rehash and tampering not in CANONICAL_TAMPERINGS | VALID_TAMPERINGS:
        assert verdict.startswith("FAIL: sequence ") and f"(line {index + 1}): " in verdict, verdict


def test_short_floats_are_their_own_repr():
    """_SHORT_FLOATS spares the batch repr() for the usual floats: every token it accepts must be its own repr()."""
    rng = random.Random(1234)
    tokens = ["0.0", "-0.0", "0.5", "0.0001", "1.0", "100.0", "0.9312", "-2.25", "123456789012.345", "10000000000000.0"]
    for _ in range(100_000):
        whole = rng.choice(["0", str(rng.randint(1, 9)), str(rng.randrange(10 ** rng.randint(1, 16)))])
        fraction = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 17)))
        tokens.append(("-" if rng.random() < 0.2 else "") + whole + "." + fraction)
    tokens += [repr(rng.uniform(-1, 1) * 10 ** rng.randint(-6, 18)) for _ in range(100_000)]
    accepted = [t for t in tokens if chain._SHORT_FLOATS.fullmatch(t + "\n")]
    assert len(accepted) > 50_000
    assert [t for t in accepted if repr(float(t)) != t] == []
    for not_canonical in ("1.50", "0.10", "0.00001", "1e5", "1.0e0", "01.5", "0.10000000000000001", "1e+16", "1e-05"):
        assert not chain._SHORT_FLOATS.fullmatch(not_canonical + "\n")  # the last two are canonical, for repr()


def test_payloads_with_members_of_their_own(tmp_path):
    """A payload may hold a "hash" (and "prev_hash") key of its own: the batch then finds each line's members by
    _MEMBERS, or leaves the lines to be checked one by one, with the same verdicts."""
    hex_64 = "ab" * 32
    payloads = {
        "hash-string": {"hash": "sha256:abc", "size": 1},
        "hash-number": {"hash": 5},
        "members-look-alike": {"hash": hex_64, "prev_hash": hex_64, "x": 1},
    }
    for name, payload in payloads.items():
        lines = synthetic_lines(6, after={"file": payload, "auc": 0.5})
        head = json.loads(lines[-1])["hash"]
        fast = fast_batch(lines)
        if name == "members-look-alike":
            assert fast is None, name  # two matches of _MEMBERS per line
        else:
            assert fast is not None and list(fast[2]) == [json.loads(line)["hash"] for line in lines], name
        assert chain.verify_lines(lines, from_genesis=True) == (6, head), name
        forged = list(lines)
        forged[3] = raw_rehash(_move_members_into_after(forged[3]))
        forged[4:] = synthetic_lines(2, start=5, prev=MEMBERS.search(forged[3])[1].decode(), after={"file": payload})
        verdict = assert_same_verdict(run_verifier(tmp_path, forged), forged)
        assert verdict.startswith("FAIL: sequence 4 (line 4): "), (name, verdict)


@pytest.mark.parametrize(
    "value",
    [
        'quote " backslash \\ slash / done',
        "tab\tnewline\ncr\rnul\x00unit\x1fdel\x7f",
        "Modèle «α» 🚀 — ünïcödé, 中文, \u2028 line separator",
        "ends with a backslash \\",
        ':starts with a colon, and has {"hash":"x","prev_hash":"y",} in it',
        "-0,-0}]",
    ],
    ids=["quotes", "controls", "unicode", "trailing-backslash", "json-like", "negative-zero-text"],
)
def test_values_with_quotes_unicode_and_control_characters(tmp_path, value):
    lines = synthetic_lines(5, reason=value, subject_repr=value, after={"v": value, "k": [value, {"z": value}]})
    head = json.loads(lines[-1])["hash"]
    result = run_verifier(tmp_path, lines, "--expect-head", head)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"OK: 5 events verified; last hash {head}"
    assert chain.verify_lines(lines, from_genesis=True) == (5, head)

    event = json.loads(lines[2])
    event["reason"] = value + "!"
    changed = chain.canonical_json(event) + b"\n"
    for forged_line, reason in (
        (changed, "hash does not match"),  # the hash kept
        # not canonical, given its raw bytes' hash
        (raw_rehash(changed.replace(b'"reason":', b'"reason": ')), "hash does not match"),
        (raw_rehash(changed.replace(b'"reason":', b'"reason":"forged","reason":')), "the key 'reason' appears twice"),
    ):
        forged_hash = MEMBERS.search(forged_line)[1].decode()
        forged = [*lines[:2], forged_line, *synthetic_lines(2, start=4, prev=forged_hash)]
        verdict = assert_same_verdict(run_verifier(tmp_path, forged), forged)
        assert verdict.startswith(f"FAIL: sequence 3 (line 3): {reason}"), verdict


def test_blank_lines_and_broken_json_are_numbered_as_before(tmp_path):
    lines = synthetic_lines(4)
    with_blank = [lines[0], b"\n", b"   \n", lines[1], lines[2][:-20] + b"\n", lines[3]]
    result = run_verifier(tmp_path, with_blank)
    assert result.returncode == 1
    assert result.stderr.startswith("FAIL: line 5: not valid JSON:"), result.stderr  # physical line numbers
    result = run_verifier(tmp_path, [lines[0], b"\n", lines[2], lines[3]])
    assert_same_verdict(result, [lines[0], lines[2], lines[3]])  # chain errors count events, not lines
    assert result.stderr.startswith("FAIL: sequence 3 (line 2): expected sequence 2 after 1")


def test_a_head_given_with_the_file_does_not_vouch_for_its_lines(tmp_path):
    """Lines given the hash of their raw bytes, relinked up to a head that comes with them: no proof that they are
    the registry's, since whoever wrote them computed that head. Lines that verify_events() would not accept, or
    that are not JSON at all, still fail, as they do without the head; a genuine chain passes with it."""
    lines = synthetic_lines(9)
    result = run_verifier(tmp_path, lines, "--expect-head", head_of(lines))
    assert (result.returncode, result.stdout.strip()) == (0, f"OK: 9 events verified; last hash {head_of(lines)}")
    for forge, expected in [
        (lambda line: line.replace(b'"tags":["a","b"]', b'"tags":["a","b"'), "FAIL: line 5: not valid JSON: "),
        (
            lambda line: line.replace(b'"action":', b'"action":"version.deleted","action":'),
            "FAIL: sequence 5 (line 5): the key 'action' appears twice in one object",
        ),
        (lambda line: line.replace(b'"tags":["a","b"]', b'"tags":["a", "b"]'), "FAIL: sequence 5 (line 5): hash"),
    ]:
        forged = list(lines)
        forged[4] = raw_rehash(forge(forged[4]))
        forged[5:] = synthetic_lines(4, start=6, prev=MEMBERS.search(forged[4])[1].decode())
        for args in [("--expect-head", head_of(forged)), ("--partial", "--expect-head", head_of(forged)), ()]:
            for jobs in ("1", "2"):
                result = run_verifier(tmp_path, forged, "--jobs", jobs, *args)
                assert result.returncode == 1, (args, result.stdout, result.stderr)
                assert result.stderr.startswith(expected), (args, result.stderr)
                assert "OK" not in result.stdout


@pytest.mark.parametrize(
    "reshape",
    [
        lambda lines: [lines[0], b"\n", *lines[1:4], b"  \n", *lines[4:]],
        lambda lines: [line.replace(b"\n", b"\r\n") for line in lines],
        lambda lines: [*lines[:-1], lines[-1].rstrip(b"\n")],
        lambda lines: [*lines, b"\n"],
    ],
    ids=["blank-lines", "crlf", "no-final-newline", "blank-last-line"],
)
def test_unusual_line_ends_with_the_head(tmp_path, reshape):
    """Line ends that the registry does not write, the head given or not: the same verdict as verify_events()."""
    lines = synthetic_lines(9)
    head = head_of(lines)
    reshaped = reshape(lines)
    for args in [("--expect-head", head), ("--expect-start", f"1:{chain.GENESIS}", "--expect-head", head), ()]:
        result = run_verifier(tmp_path, reshaped, *args)
        assert (result.returncode, result.stdout.strip(), result.stderr) == (
            0,
            f"OK: 9 events verified; last hash {head}",
            "",
        )
    result = run_verifier(tmp_path, reshaped, "--expect-head", head_of(lines[:-1]))
    assert_fails_at(result, 10)


@pytest.mark.parametrize("mode", [[], ["--partial"], ["--allow-gaps"]], ids=["whole", "partial", "gaps"])
def test_partial_and_filtered_exports(tmp_path, mode):
    lines = synthetic_lines(12)
    tail = lines[4:]
    result = run_verifier(tmp_path, tail, *mode)
    if mode:
        assert result.returncode == 0, result.stderr
    else:
        assert_same_verdict(result, tail)
    gappy = lines[1:3] + lines[5:9] + lines[10:]
    result = run_verifier(tmp_path, gappy, *mode)
    if mode == ["--allow-gaps"]:
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"OK: {len(gappy)} events verified")
        backwards = [gappy[1], gappy[0], *gappy[2:]]
        assert_same_verdict(run_verifier(tmp_path, backwards, *mode), backwards, allow_gaps=True, from_genesis=False)
    else:
        assert_same_verdict(result, gappy, from_genesis=not mode)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_filtered_export_checks_what_it_can_and_says_what_it_cannot(tmp_path, jobs):
    """--allow-gaps: an event rewritten with its hash recomputed is caught when its successor is in the file
    (they must link); when it is not, nothing in the file can show it, and the verifier says so."""
    lines = synthetic_lines(12)
    gappy = lines[1:3] + lines[5:9] + lines[10:]  # sequences 2-3, 6-9, 11-12
    forged = list(gappy)
    forged[3] = raw_rehash(TAMPERINGS["value-in-a-string"](forged[3]))  # sequence 7; 8 follows it in the file
    result = run_verifier(tmp_path, forged, "--allow-gaps", "--jobs", jobs)
    assert result.returncode == 1 and "OK" not in result.stdout
    assert result.stderr.startswith("FAIL: sequence 8 (line 5): prev_hash does not match"), result.stderr
    assert_same_verdict(result, forged, allow_gaps=True, from_genesis=False)
    forged = list(gappy)
    forged[5] = raw_rehash(TAMPERINGS["value-in-a-string"](forged[5]))  # sequence 9; 10 was filtered out
    result = run_verifier(tmp_path, forged, "--allow-gaps", "--jobs", jobs)
    assert result.returncode == 0 and result.stdout.startswith(f"OK: {len(gappy)} events verified")
    assert "verify a contiguous export" in result.stderr
    start = f"5:{json.loads(lines[3])['hash']}"
    assert run_verifier(tmp_path, lines[4:], "--expect-start", start, "--jobs", jobs).stderr == ""
    assert "no event is missing from the start" in run_verifier(tmp_path, lines[4:], "--partial").stderr


@pytest.mark.parametrize("jobs", ["1", "2", "3"])
def test_a_large_export_in_parallel(tmp_path, jobs):
    """More than one worker's share (about a MB) of lines: checked in blocks, by worker processes with --jobs."""
    lines = synthetic_lines(4000)
    assert sum(map(len, lines)) > 2 * chain.TASK_SIZE
    head = json.loads(lines[-1])["hash"]
    result = run_verifier(tmp_path, lines, "--jobs", jobs, "--expect-head", head)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"OK: 4000 events verified; last hash {head}"

    for index, tampering in [(3170, "duplicate-key"), (2400, "members-in-after"), (1999, "key-order")]:
        forged = list(lines)
        forged[index] = raw_rehash(TAMPERINGS[tampering](forged[index]))
        forged_hash = MEMBERS.search(forged[index])[1].decode()
        forged[index + 1 :] = synthetic_lines(len(lines) - index - 1, start=index + 2, prev=forged_hash)
        assert_same_verdict(run_verifier(tmp_path, forged, "--jobs", jobs), forged)
    swapped = [*lines[:2500], lines[2501], lines[2500], *lines[2502:]]
    assert_same_verdict(run_verifier(tmp_path, swapped, "--jobs", jobs), swapped)
    result = run_verifier(tmp_path, lines[:-1], "--jobs", jobs, "--expect-head", head)
    assert_fails_at(result, 4000)


def test_jobs_must_be_positive(tmp_path):
    result = run_verifier(tmp_path, synthetic_lines(2), "--jobs", "0")
    assert result.returncode == 2


def test_lines_that_only_parse_together_are_not_mistaken_for_events(tmp_path):
    """Two lines, neither of them JSON, that joined form a JSON value holding two events, each with hashes made to
    match the other line: checked as a batch, they must still not pass for two events."""

    def event(seq: int, **fields) -> dict:
        return {**json.loads(synthetic_lines(1, start=seq)[0]), **fields}

    def body(line: bytes) -> bytes:
        return MEMBERS.sub(b"", line, count=1)

    # line 1: event 2, its token_id an array left open; line 2: event 1, then what closes line 1
    placeholder = "0" * 64
    first = chain.canonical_json(event(2, token_id=None, hash=placeholder, prev_hash=placeholder))
    first = first.replace(b'"token_id":null}', b'"token_id":[{"q":{}')
    hash_1 = hashlib.sha256(chain.GENESIS.encode() + body(first)).hexdigest()  # event 1's hash, over line 1
    second = chain.canonical_json(event(1, hash=hash_1, prev_hash=chain.GENESIS)) + b"}]}"
    hash_2 = hashlib.sha256(hash_1.encode() + body(second)).hexdigest()  # event 2's hash, over line 2
    first = first.replace(
        f'"hash":"{placeholder}","prev_hash":"{placeholder}"'.encode(),
        f'"hash":"{hash_2}","prev_hash":"{hash_1}"'.encode(),
    )
    lines = [first + b"\n", second + b"\n"]
    assert body(first) == body(lines[0].rstrip(b"\n"))
    result = run_verifier(tmp_path, lines)
    assert result.returncode == 1
    assert result.stderr.startswith("FAIL: line 1: not valid JSON"), result.stderr


@pytest.mark.parametrize("start", [0, -3])
@pytest.mark.parametrize("mode", [[], ["--partial"], ["--allow-gaps"]], ids=["whole", "partial", "gaps"])
def test_sequence_numbers_below_one(tmp_path, start, mode):
    lines = synthetic_lines(6, start=start)  # well linked and hashed, and canonical
    result = run_verifier(tmp_path, lines, *mode)
    verdict = assert_same_verdict(result, lines, allow_gaps=mode == ["--allow-gaps"], from_genesis=not mode)
    assert verdict == f"FAIL: sequence {start} (line 1): seq must be a positive integer"


@pytest.mark.parametrize("mode", [[], ["--partial"], ["--allow-gaps"]], ids=["whole", "partial", "gaps"])
def test_a_sequence_number_of_true_is_not_sequence_one(tmp_path, mode):
    """JSON true reads as a Python bool, which is an int equal to 1: hashed as `true`, it passed as event 1."""
    lines = synthetic_lines(1, seq=True) + synthetic_lines(
        2, start=2, prev=json.loads(synthetic_lines(1, seq=True)[0])["hash"]
    )
    result = run_verifier(tmp_path, lines, *mode)
    verdict = assert_same_verdict(result, lines, allow_gaps=mode == ["--allow-gaps"], from_genesis=not mode)
    assert verdict == "FAIL: line 1: seq must be a positive integer, not true"


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_bytes_that_are_not_utf8_fail_naming_the_line(tmp_path, jobs):
    """Not a traceback: a FAIL line, as for any other line that is not an event."""
    result = run_verifier(tmp_path, [b"\xff\xfe{}\n"], "--jobs", jobs)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == "FAIL: line 1: not valid utf-8: invalid start byte at byte 0"


def test_json_text_around_cuts_the_payload_where_the_database_fills_in():
    """The registration statement writes prefix || number || suffix: the payload record() would have written,
    redaction included; a secret-like key has no place to cut (its value is never kept)."""
    from audit.services import _to_json_text, json_text_around

    payload = {"digest": "sha256:" + "a" * 64, "number": None, "api_key": "k-1", "tags": {"stage": "dev"}}
    prefix, suffix = json_text_around(payload, "number")
    assert prefix + "17" + suffix == _to_json_text({**payload, "number": 17})
    assert '"api_key":"[redacted]"' in prefix + suffix
    with pytest.raises(ValueError, match="names a secret"):
        json_text_around(payload, "api_key")
