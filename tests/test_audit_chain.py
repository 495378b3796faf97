"""The audit log is append-only in the database and hash-chained; both verifiers catch tampering."""

import io
import json
import os
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


def system_python() -> str:
    """A Python outside the project's venv: the verifier must run with the standard library alone."""
    for candidate in ("/usr/bin/python3", shutil.which("python3", path=os.defpath)):
        if candidate and Path(candidate).exists() and Path(candidate).resolve() != Path(sys.executable).resolve():
            return candidate
    raise AssertionError("no system python3 outside the venv found")


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


def test_raw_sql_update_and_delete_rejected_on_sqlite(tmp_path):
    db_file = tmp_path / "registry.sqlite3"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{db_file}",
        "DJANGO_DEBUG": "1",
        "DATA_DIR": str(tmp_path / "data"),
        "CELERY_BROKER_URL": "filesystem://",
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    migrate = subprocess.run([*manage, "migrate", "--noinput"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr
    script = (
        "from django.core.management import call_command\n"
        "from django.db import transaction\n"
        "from audit.services import record\n"
        "with transaction.atomic():\n"
        "    record(action='test.sqlite', subject_type='test', subject_id='1', actor='system:test', after={'a': 1})\n"
        "    record(action='test.sqlite', subject_type='test', subject_id='2', actor='system:test')\n"
        "call_command('audit_verify')\n"  # read back from SQLite, the chain still verifies
    )
    shell = subprocess.run([*manage, "shell", "-c", script], env=env, cwd=ROOT, capture_output=True, text=True)
    assert shell.returncode == 0, shell.stderr
    assert "OK: 2 audit events verified" in shell.stdout

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
    finally:
        db.close()


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
    new_hash = forged.computed_hash()
    tamper(("UPDATE audit_auditevent SET reason = %s, hash = %s WHERE seq = 3", ["forged", new_hash]))
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
