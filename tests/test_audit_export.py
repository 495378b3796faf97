"""GET /api/v1/audit/events: streamed NDJSON and CSV, filtered, for auditors only."""

import csv
import io
import json
import subprocess
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction

from accounts import roles, services
from audit import chain, selectors
from audit.models import AuditEvent, format_time
from audit.services import record
from tests.conftest import bearer
from tests.test_audit_chain import system_python, tamper

URL = "/api/v1/audit/events"
CHAIN_SCRIPT = Path(__file__).resolve().parent.parent / "audit" / "chain.py"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def auditor(personas):
    return personas["auditor"].client()


@pytest.fixture
def lone_auditor(db):
    """An auditor without the other personas, for tests that need no log."""
    user = get_user_model().objects.create_user(username="lone-auditor", password=None)
    user.groups.add(roles.ensure_roles()[roles.AUDITORS])
    return bearer(services.token_create(actor="test", user=user, name="a", scopes=["audit:read"]).plaintext)


@pytest.fixture
def log(personas) -> list[AuditEvent]:
    """The personas' own events (tokens, memberships) plus events on two subjects by two actors."""
    owner, ci_bot = personas["owner"].user, personas["ci_bot"].user
    with transaction.atomic():
        for n in range(3):
            record(action="model.changed", subject_type="registry.model", subject_id="7", actor=owner, after={"n": n})
            record(action="model.changed", subject_type="registry.model", subject_id="8", actor=ci_bot, after={"n": n})
            record(action="model.changed", subject_type="registry.version", subject_id="7", actor=ci_bot)
    events = list(AuditEvent.objects.order_by("seq"))
    assert len(events) > 9
    return events


def ndjson(response) -> list[dict]:
    assert response.status_code == 200, response.content if not response.streaming else b""
    assert response.streaming
    assert response["Content-Type"] == "application/x-ndjson"
    body = b"".join(response.streaming_content)
    assert body == b"" or body.endswith(b"\n")
    return [json.loads(line) for line in body.splitlines()]


def csv_rows(response) -> list[dict]:
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode()
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    assert header == [*chain.EVENT_FIELDS, "prev_hash", "hash"]
    return [dict(zip(header, row, strict=True)) for row in reader]


def seqs(events) -> list[int]:
    return [int(e["seq"]) if isinstance(e, dict) else e.seq for e in events]


def verify_offline(tmp_path: Path, lines: list[dict], *args: str) -> subprocess.CompletedProcess:
    export = tmp_path / "export.ndjson"
    export.write_bytes(b"".join(chain.canonical_json(e) + b"\n" for e in lines))
    return subprocess.run(
        [system_python(), "-I", "-S", str(CHAIN_SCRIPT), str(export), *args], capture_output=True, text=True, timeout=30
    )


# --- the whole log --------------------------------------------------------------------------


def test_ndjson_export_is_the_whole_chain(auditor, log, tmp_path):
    response = auditor.get(URL)
    events = ndjson(response)
    assert seqs(events) == seqs(log)
    assert events == [e.as_export_dict() for e in log]
    assert response["X-Audit-Last-Seq"] == str(log[-1].seq)
    assert response["X-Audit-Last-Hash"] == log[-1].hash
    assert response["Content-Disposition"] == 'attachment; filename="audit-events.ndjson"'
    result = verify_offline(tmp_path, events, "--expect-head", response["X-Audit-Last-Hash"])
    assert result.returncode == 0, result.stderr


def test_head_endpoint_matches_the_export(auditor, log):
    response = auditor.get("/api/v1/audit/head")
    assert response.status_code == 200
    assert response.json() == {"seq": log[-1].seq, "hash": log[-1].hash}


def test_csv_export_has_the_same_events(auditor, log):
    response = auditor.get(URL, {"format": "csv"})
    rows = csv_rows(response)
    assert response["Content-Disposition"] == 'attachment; filename="audit-events.csv"'
    assert response["X-Audit-Last-Hash"] == log[-1].hash
    assert seqs(rows) == seqs(log)
    for row, event in zip(rows, log, strict=True):
        assert row["hash"] == event.hash
        assert row["prev_hash"] == event.prev_hash
        assert row["action"] == event.action
        assert row["actor_id"] == ("" if event.actor_id is None else str(event.actor_id))
        assert row["at"] == format_time(event.at)
        assert json.loads(row["after"]) == json.loads(event.after)


def test_export_ignores_the_accept_header(auditor, log):
    """Clients that ask for the media type they want must not get 406."""
    assert ndjson(auditor.get(URL, HTTP_ACCEPT="application/x-ndjson")) == [e.as_export_dict() for e in log]
    assert seqs(csv_rows(auditor.get(URL, {"format": "csv"}, HTTP_ACCEPT="text/csv"))) == seqs(log)
    error = auditor.get(URL, {"nope": "1"}, HTTP_ACCEPT="text/csv")
    assert error.status_code == 400
    assert error.json()["error"]["code"] == "invalid"


def test_csv_cells_that_look_like_formulas_are_escaped(personas, auditor, tmp_path):
    """Client text in the CSV export starting with = + - @ tab or CR gets a leading ' so a spreadsheet shows it
    instead of running it; before/after stay exact JSON; the NDJSON export keeps every value as stored."""
    from tests.registry.helpers import register_body, s3_manifest

    owner = personas["owner"].client()
    assert owner.post("/api/v1/models/", {"namespace": "acme", "name": "churn"}, format="json").status_code == 201
    assert (
        owner.post("/api/v1/models/acme/churn/versions/", register_body(s3_manifest(b"v1")), format="json").status_code
        == 201
    )
    link = '=HYPERLINK("http://evil.example","open")'
    response = owner.patch(
        "/api/v1/models/acme/churn/versions/1", {"tags": {"stage": "=1+1"}, "reason": link}, format="json"
    )
    assert response.status_code == 200, response.content
    texts = ["+SUM(1,2)", "-2+3", "@cmd", "\tx", "\rx", "plain", "a=b"]
    with transaction.atomic():
        for text in texts:
            record(action="test.csv", subject_type="t", subject_id=text, subject_repr=text, reason=text, after=-0.5)
    rows = csv_rows(auditor.get(URL, {"format": "csv"}))
    (patched,) = [r for r in rows if r["reason"] == "'" + link]
    assert json.loads(patched["after"])["tags"] == {"stage": "=1+1"}  # JSON text starts with "{": kept exact
    written = [r for r in rows if r["action"] == "test.csv"]
    escaped = ["'+SUM(1,2)", "'-2+3", "'@cmd", "'\tx", "'\rx", "plain", "a=b"]
    assert [(r["subject_id"], r["subject_repr"], r["reason"]) for r in written] == [(e, e, e) for e in escaped]
    assert {r["after"] for r in written} == {"-0.5"}  # a JSON number, not a formula: left as is
    assert all(r["seq"].isdigit() for r in rows)
    # The NDJSON export is the hash-verified one: values exactly as stored, and the chain verifies.
    response = auditor.get(URL)
    events = ndjson(response)
    assert [e["reason"] for e in events if e["action"] == "test.csv"] == texts
    assert link in [e["reason"] for e in events]
    result = verify_offline(tmp_path, events, "--expect-head", response["X-Audit-Last-Hash"])
    assert result.returncode == 0, result.stderr


# --- filters --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_filter_by_subject(auditor, log, fmt, tmp_path):
    response = auditor.get(URL, {"format": fmt, "subject_type": "registry.model", "subject_id": "7"})
    got = ndjson(response) if fmt == "ndjson" else csv_rows(response)
    expected = [e for e in log if (e.subject_type, e.subject_id) == ("registry.model", "7")]
    assert len(expected) == 3
    assert seqs(got) == seqs(expected)
    assert response["X-Audit-Last-Seq"] == str(expected[-1].seq)
    assert response["X-Audit-Last-Hash"] == expected[-1].hash
    if fmt == "ndjson":
        assert verify_offline(tmp_path, got, "--allow-gaps").returncode == 0
        gaps = verify_offline(tmp_path, got)
        assert gaps.returncode == 1
        assert f"sequence {expected[0].seq}" in gaps.stderr


@pytest.mark.parametrize(
    ("params", "some"),
    [
        ({}, True),
        ({"subject_type": "registry.model", "subject_id": "7"}, True),
        ({"actor": "ci_bot", "after_seq": "3"}, True),
        ({"after_seq": "3"}, True),
        ({"since": "2000-01-01T00:00:00Z"}, True),
        ({"until": "2000-01-01T00:00:00Z"}, False),
        ({"after_seq": str(2**63 - 1)}, False),
        ({"format": "csv", "actor": "owner"}, True),
    ],
)
def test_count_header_is_the_number_of_events(auditor, log, params, some):
    response = auditor.get(URL, params)
    got = csv_rows(response) if params.get("format") == "csv" else ndjson(response)
    assert response["X-Audit-Count"] == str(len(got))
    assert bool(got) == some


def test_filtered_export_missing_an_event_between_its_ends_fails_only_with_the_count(auditor, log, tmp_path):
    """With --allow-gaps sequence numbers only have to increase: an event removed from between the first and the
    last passes every other check, the start and the head included. X-Audit-Count catches it, and an event of
    another subject slipped in where it links."""
    response = auditor.get(URL, {"subject_type": "registry.model", "subject_id": "7"})
    got = ndjson(response)
    assert len(got) == 3
    start = f"{response['X-Audit-First-Seq']}:{response['X-Audit-First-Prev-Hash']}"
    expect = ["--allow-gaps", "--expect-start", start, "--expect-head", response["X-Audit-Last-Hash"]]
    count = ["--expect-count", response["X-Audit-Count"]]

    whole = verify_offline(tmp_path, got, *expect, *count)
    assert whole.returncode == 0, whole.stderr
    assert "--expect-count" not in whole.stderr  # no note that it is missing

    removed = [got[0], got[2]]
    unseen = verify_offline(tmp_path, removed, *expect)
    assert unseen.returncode == 0, unseen.stderr  # why the count is needed
    assert "pass --expect-count with the export's X-Audit-Count" in unseen.stderr
    caught = verify_offline(tmp_path, removed, *expect, *count)
    assert caught.returncode == 1
    assert "FAIL: the file holds 2 events but the registry selected 3: events were removed" in caught.stderr

    other = next(e.as_export_dict() for e in log if got[0]["seq"] < e.seq < got[1]["seq"])
    added = verify_offline(tmp_path, [got[0], other, *got[1:]], *expect, *count)
    assert added.returncode == 1
    assert "FAIL: the file holds 4 events but the registry selected 3: events were added" in added.stderr


@pytest.mark.parametrize("value", ["-1", "x", "1.0", ""])
def test_expect_count_must_be_a_number_of_events(tmp_path, value):
    result = verify_offline(tmp_path, [], "--expect-count", value)
    assert result.returncode == 2
    assert "expected a number of events (the export's X-Audit-Count)" in result.stderr


def test_filter_by_subject_type_alone(auditor, log):
    got = ndjson(auditor.get(URL, {"subject_type": "registry.version"}))
    assert seqs(got) == seqs(e for e in log if e.subject_type == "registry.version")
    assert len(got) == 3


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_filter_by_actor(auditor, log, fmt):
    response = auditor.get(URL, {"format": fmt, "actor": "owner"})
    got = ndjson(response) if fmt == "ndjson" else csv_rows(response)
    expected = [e for e in log if e.actor_username == "owner"]
    assert len(expected) >= 3
    assert seqs(got) == seqs(expected)
    assert {row["actor_username"] for row in got} == {"owner"}


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_filter_by_time_range(auditor, log, fmt, tmp_path):
    since, until = log[3], log[7]
    response = auditor.get(URL, {"format": fmt, "since": format_time(since.at), "until": format_time(until.at)})
    got = ndjson(response) if fmt == "ndjson" else csv_rows(response)
    assert seqs(got) == [since.seq, *range(since.seq + 1, until.seq)]  # since inclusive, until exclusive
    assert response["X-Audit-Last-Seq"] == str(until.seq - 1)
    if fmt == "ndjson":
        assert verify_offline(tmp_path, got, "--partial").returncode == 0
        missing_start = verify_offline(tmp_path, got)
        assert missing_start.returncode == 1
        assert "--partial" in missing_start.stderr


def test_time_filters_accept_offsets(auditor, log):
    at = log[5].at
    got = ndjson(auditor.get(URL, {"since": at.isoformat()}))  # "+00:00" form
    assert seqs(got) == seqs(log[5:])
    got = ndjson(auditor.get(URL, {"until": at.astimezone().isoformat()}))
    assert seqs(got) == seqs(log[:5])


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_filter_after_seq(auditor, log, fmt, tmp_path):
    response = auditor.get(URL, {"format": fmt, "after_seq": log[4].seq})
    got = ndjson(response) if fmt == "ndjson" else csv_rows(response)
    assert seqs(got) == seqs(log[5:])
    assert response["X-Audit-Last-Hash"] == log[-1].hash
    assert (response["X-Audit-First-Seq"], response["X-Audit-First-Prev-Hash"]) == (str(log[5].seq), log[4].hash)
    if fmt == "ndjson":
        assert verify_offline(tmp_path, got, "--partial", "--expect-head", log[-1].hash).returncode == 0
        start = f"{response['X-Audit-First-Seq']}:{response['X-Audit-First-Prev-Hash']}"
        assert verify_offline(tmp_path, got, "--expect-start", start, "--expect-head", log[-1].hash).returncode == 0
        assert verify_offline(tmp_path, got[1:], "--expect-start", start).returncode == 1


def test_filters_combine(auditor, log):
    got = ndjson(auditor.get(URL, {"actor": "ci_bot", "subject_type": "registry.model", "after_seq": log[-4].seq}))
    expected = [e for e in log[-3:] if e.actor_username == "ci_bot" and e.subject_type == "registry.model"]
    assert len(expected) == 1
    assert seqs(got) == seqs(expected)


def test_empty_result(auditor, log):
    response = auditor.get(URL, {"actor": "nobody"})
    assert ndjson(response) == []
    assert response["X-Audit-Last-Seq"] == "0"
    assert response["X-Audit-Last-Hash"] == chain.GENESIS
    assert response["X-Audit-First-Seq"] == "0"  # said the same way: 0 and the genesis hash, none included
    assert response["X-Audit-First-Prev-Hash"] == chain.GENESIS


def test_export_is_a_snapshot(auditor, log):
    """Events appended while the response streams are not included; the headers stay true."""
    response = auditor.get(URL)
    with transaction.atomic():
        record(action="late", subject_type="t", subject_id="1", actor="system:test")
    events = ndjson(response)
    assert seqs(events) == seqs(log)
    assert response["X-Audit-Last-Seq"] == str(log[-1].seq)
    assert response["X-Audit-Count"] == str(len(log))


# --- bad queries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-45T00:00:00Z"}, "until"),
        ({"since": "2026-01-01T00:00:00Z", "until": "not-a-date"}, "until"),
        ({"after_seq": "abc"}, "after_seq"),
        ({"after_seq": "-1"}, "after_seq"),
        ({"after_seq": "99999999999999999999"}, "after_seq"),  # beyond bigint: was a 200 whose stream broke
        ({"after_seq": str(2**63)}, "after_seq"),
        ({"format": "xml"}, "format"),
        ({"subject_type": "x" * 101}, "subject_type"),
        ({"actor": ""}, "actor"),
    ],
)
def test_bad_query_is_400_naming_the_field(lone_auditor, params, field):
    response = lone_auditor.get(URL, params)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["message"].startswith(f"Invalid input. {field}:"), error["message"]
    assert field in error["detail"]


def test_after_seq_beyond_bigint_is_400_and_the_largest_bigint_exports_nothing(auditor, log):
    response = auditor.get(f"{URL}?after_seq=99999999999999999999")
    assert response.status_code == 400, b"".join(response.streaming_content) if response.streaming else b""
    assert "after_seq" in response.json()["error"]["message"]
    for fmt in ("ndjson", "csv"):
        response = auditor.get(URL, {"format": fmt, "after_seq": str(2**63 - 1)})
        assert response.status_code == 200
        assert response["X-Audit-Last-Seq"] == "0"
        assert b"".join(response.streaming_content).count(b"\n") == (fmt == "csv")  # the CSV header alone


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_an_export_no_row_can_match_streams_nothing(log, fmt):
    """A filter the database is never asked about (Django finds that no row can match): nothing, not an error."""
    export = selectors.export(fmt, after_seq=10**20)
    assert (export.last_seq, export.last_hash) == (0, chain.GENESIS)
    assert (export.first_seq, export.first_prev_hash, export.count) == (0, chain.GENESIS, 0)
    assert b"".join(export.chunks).count(b"\n") == (fmt == "csv")


@pytest.mark.parametrize("param", ["subject", "limit", "page", "since_seq"])
def test_unknown_query_parameter_is_400(lone_auditor, param):
    response = lone_auditor.get(URL, {param: "1"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert param in error["message"]
    assert param in error["detail"]


# --- who may export -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("persona", "status"),
    [("admin", 200), ("auditor", 200), ("owner", 403), ("reviewer", 403), ("ci_bot", 403), ("outsider", 403)],
)
@pytest.mark.parametrize("path", [URL, "/api/v1/audit/head"])
def test_who_may_export(personas, persona, status, path):
    response = personas[persona].client().get(path)
    assert response.status_code == status
    if status == 403:
        error = response.json()["error"]
        assert error["code"] == "forbidden"
        assert "auditor" in error["message"]
    else:
        assert response["X-Audit-Last-Seq"] if path == URL else response.json()["seq"] > 0


def test_refused_export_streams_nothing(personas):
    response = personas["reviewer"].client().get(URL)
    assert response.status_code == 403
    assert not response.streaming
    assert "X-Audit-Last-Seq" not in response


@pytest.mark.parametrize("path", [URL, "/api/v1/audit/head"])
def test_token_without_audit_scope_is_403_insufficient_scope(personas, make_token, path):
    token = make_token(personas["auditor"].user, ["read"])
    response = bearer(token).get(path)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "insufficient_scope"
    assert "audit:read" in error["message"]


def test_token_with_only_audit_scope_may_export(personas, make_token, log):
    token = make_token(personas["auditor"].user, ["audit:read"])
    assert seqs(ndjson(bearer(token).get(URL))) == [*seqs(log), log[-1].seq + 1]  # + the token's creation


def test_auditor_session_may_export(personas, client, log):
    client.force_login(personas["auditor"].user)
    assert seqs(ndjson(client.get(URL))) == seqs(log)


def test_anonymous_is_401(db, client):
    response = client.get(URL)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_inactive_auditor_is_refused(personas):
    user = get_user_model().objects.get(username="auditor")
    user.is_active = False
    user.save(update_fields=["is_active"])
    response = personas["auditor"].client().get(URL)
    assert response.status_code == 401
    assert "inactive" in response.json()["error"]["message"]


# --- the PostgreSQL-built lines ---------------------------------------------------------------------

TRICKY = [
    'quote " backslash \\ slash / tab \t newline \n return \r',
    "controls (PostgreSQL text holds no NUL) \x01\x08\x0b\x0c\x1f\x7f",
    "non-ASCII é ü 漢字 🚀 \u2028 \u2029 \ufeff",
    "",
    "x" * 5000,
    'backslash runs \\\\ \\\\\\ a literal \\n, \\" and one at the end \\',
]


def test_stored_lines_are_the_canonical_export_byte_for_byte(personas):
    """The line the chain-link trigger stores (PostgreSQL) is the Python definition (chain.canonical_json of
    as_export_dict(), what SQLite stores) for every character class, so the export, the offline verifier's
    fast path and the registry's own audit_verify see the same bytes."""
    from django.db import connection

    from audit import selectors

    assert connection.vendor == "postgresql"
    owner = personas["owner"].user
    with transaction.atomic():
        for n, text in enumerate(TRICKY):
            record(
                action=f"tricky.{n}",
                subject_type="t",
                subject_id=text[:200] or "0",
                subject_repr=text[:300],
                actor=owner if n % 2 else "system:test",
                token_id=n if n % 2 else None,
                reason=text,
                before={"text": text, "list": [1, 2.5, None, True]},
                after={"nested": {"z": text[:50], "a": -1}} if n else None,
            )
    stored = list(AuditEvent.objects.order_by("seq"))
    assert len(stored) >= len(TRICKY)
    assert [event.line for event in stored] == [event.export_line() for event in stored]
    body = b"".join(selectors.ndjson_chunks(selectors.events()))
    assert body == "".join(event.export_line() + "\n" for event in stored).encode()
    lines = body.splitlines()
    assert chain.verify_events([json.loads(line) for line in lines], from_genesis=True)[0] == len(stored)


def test_events_without_a_stored_line_are_exported_alike(auditor, log, monkeypatch):
    """Events recorded before lines were stored (migration 0005) have none: the export builds theirs, byte for
    byte, also in chunks that mix both kinds, and audit_verify still passes."""
    from audit import selectors

    monkeypatch.setattr(selectors, "EXPORT_BATCH", 3)
    stored = b"".join(auditor.get(URL).streaming_content)
    tamper(("UPDATE audit_auditevent SET line = NULL WHERE seq %% 2 = 0", []))
    assert AuditEvent.objects.filter(line__isnull=True).count() == len(log) // 2
    assert b"".join(auditor.get(URL).streaming_content) == stored
    assert b"".join(auditor.get(URL, {"after_seq": log[2].seq}).streaming_content).startswith(
        log[3].export_line().encode() + b"\n"
    )
    call_command("audit_verify", stdout=io.StringIO())


def test_sqlite_exports_the_stored_lines_and_builds_missing_ones(sqlite_shell):
    """On the embedded default (SQLite) record() stores each line as it links the event, and the export
    builds the line of an event that has none (a database older than migration 0005), byte for byte."""
    script = (
        "from django.db import connection, transaction\n"
        "from audit import selectors\n"
        "from audit.models import AuditEvent\n"
        "from audit.services import record\n"
        "from tests.test_audit_export import TRICKY\n"
        "with transaction.atomic():\n"
        "    for n, text in enumerate(TRICKY):\n"
        "        record(action=f't.{n}', subject_type='t', subject_id=str(n), subject_repr=text[:300],\n"
        "               actor='system:test', reason=text, after={'text': text, 'n': [n, 2.5, None]})\n"
        "events = list(AuditEvent.objects.order_by('seq'))\n"
        "assert [e.line for e in events] == [e.export_line() for e in events]\n"
        "expected = ''.join(e.export_line() + '\\n' for e in events).encode()\n"
        "assert b''.join(selectors.ndjson_chunks(selectors.events())) == expected\n"
        "with connection.cursor() as cursor:\n"  # as a log older than stored lines: the triggers forbid it
        "    cursor.execute('DROP TRIGGER audit_auditevent_protect_update')\n"
        "    cursor.execute('UPDATE audit_auditevent SET line = NULL WHERE seq % 2 = 0')\n"
        "assert AuditEvent.objects.filter(line__isnull=True).count() == len(events) // 2 > 0\n"
        "selectors.EXPORT_BATCH = 2\n"
        "assert b''.join(selectors.ndjson_chunks(selectors.events())) == expected\n"
        "print('exported', len(events))\n"
    )
    printed, _ = sqlite_shell(script)
    assert printed.splitlines()[-1] == f"exported {len(TRICKY)}"


def test_audit_verify_detects_a_changed_line(log):
    """The export serves the stored line: one that no longer says what the hashed columns say is reported."""
    forged = json.loads(log[2].line)
    forged["reason"] = "forged"
    tamper(
        ("UPDATE audit_auditevent SET line = %s WHERE seq = %s", [chain.canonical_json(forged).decode(), log[2].seq])
    )
    with pytest.raises(CommandError, match=rf"sequence {log[2].seq}: its stored export line differs from its columns"):
        call_command("audit_verify", stdout=io.StringIO())


def test_export_streams_in_chunks(auditor, log, monkeypatch):
    """More events than one batch: every event once, in order, over several chunks."""
    from audit import selectors

    monkeypatch.setattr(selectors, "EXPORT_BATCH", 4)
    response = auditor.get(URL)
    chunks = list(response.streaming_content)
    assert len(chunks) == -(-len(log) // 4)
    events = [json.loads(line) for line in b"".join(chunks).splitlines()]
    assert seqs(events) == seqs(log)
    csv_response = auditor.get(URL, {"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(b"".join(csv_response.streaming_content).decode())))
    assert [int(r["seq"]) for r in rows] == seqs(log)


@pytest.mark.django_db(transaction=True)  # the stream runs after the view, in autocommit, as in the service
def test_an_export_abandoned_midway_leaves_the_connection_usable(auditor, log, monkeypatch):
    """A client that goes away mid-download closes the stream: the COPY is cancelled, and the connection (the
    same one, in this thread) answers the next query and the next export."""
    from audit import selectors

    monkeypatch.setattr(selectors, "EXPORT_BATCH", 2)
    response = auditor.get(URL)
    chunks = iter(response.streaming_content)
    assert len(next(chunks).splitlines()) == 2
    response.close()
    assert AuditEvent.objects.count() == len(log)
    assert seqs(ndjson(auditor.get(URL))) == seqs(log)


def test_several_copy_statements_continue_after_the_last_seq(auditor, log, monkeypatch):
    """PostgreSQL streams the export with one COPY per range of chunks: every event once, in order, across
    ranges, filtered or not, and ranges that end exactly at the end of the log."""
    from audit import selectors

    monkeypatch.setattr(selectors, "EXPORT_BATCH", 2)
    monkeypatch.setattr(selectors, "EXPORT_BATCHES_PER_COPY", 2)
    assert seqs(ndjson(auditor.get(URL))) == seqs(log)
    expected = [e for e in log if e.subject_type == "registry.model"]
    assert seqs(ndjson(auditor.get(URL, {"subject_type": "registry.model"}))) == seqs(expected)
    monkeypatch.setattr(selectors, "EXPORT_BATCH", 1)  # every range full, the last one too
    monkeypatch.setattr(selectors, "EXPORT_BATCHES_PER_COPY", 1)
    body = b"".join(auditor.get(URL).streaming_content)
    assert body == "".join(event.export_line() + "\n" for event in log).encode()


def test_filtered_export_pages_through_every_match(auditor, log, monkeypatch):
    """Chunks are pages after the last seq seen: with filters, every match arrives once, in order,
    including ones past the first pages' range."""
    from audit import selectors

    monkeypatch.setattr(selectors, "EXPORT_BATCH", 2)
    response = auditor.get(URL, {"subject_type": "registry.model", "subject_id": "7", "after_seq": log[0].seq})
    chunks = list(response.streaming_content)
    expected = [e for e in log[1:] if (e.subject_type, e.subject_id) == ("registry.model", "7")]
    assert len(expected) >= 3
    assert len(chunks) == -(-len(expected) // 2)
    assert seqs(json.loads(line) for line in b"".join(chunks).splitlines()) == seqs(expected)


def test_sqlite_export_stream_lets_writers_in(sqlite_shell):
    """On SQLite a transaction is the write lock (transaction_mode IMMEDIATE): an export held open by a slow
    client must not hold one, or every write waits for the download and fails with "database is locked". With
    a CSV and an NDJSON stream partly read, another connection records an event; each export is then complete,
    byte for byte what it was before the write, and ends at its own last seq (the late event left out)."""
    script = (
        "import threading\n"
        "from django.conf import settings\n"
        "from django.db import connection, transaction\n"
        "from audit import selectors\n"
        "from audit.services import record\n"
        "with transaction.atomic():\n"
        "    for n in range(60):\n"
        "        record(action='t', subject_type='t', subject_id=str(n), actor='system:test', reason='=1+1',\n"
        "               after={'n': n})\n"
        "selectors.EXPORT_BATCH = 7\n"
        "settings.DATABASES['default']['OPTIONS']['timeout'] = 3  # connections opened from now on\n"
        "def write(outcome, fmt):\n"
        "    try:\n"
        "        with transaction.atomic():\n"
        "            record(action=f'written.mid.{fmt}', subject_type='t', subject_id=fmt, actor='system:test')\n"
        "        outcome.append('written')\n"
        "    except Exception as error:\n"
        "        outcome.append(repr(error))\n"
        "    finally:\n"
        "        connection.close()\n"
        "for fmt in ('csv', 'ndjson'):\n"
        "    before = selectors.export(fmt)\n"
        "    expected = b''.join(before.chunks)\n"
        "    export = selectors.export(fmt)\n"
        "    assert (export.last_seq, export.last_hash) == (before.last_seq, before.last_hash)\n"
        "    read = [next(export.chunks), next(export.chunks)]  # the stream is open, partly sent\n"
        "    outcome = []\n"
        "    writer = threading.Thread(target=write, args=(outcome, fmt))\n"
        "    writer.start()\n"
        "    writer.join(20)\n"
        "    assert outcome == ['written'], (fmt, outcome)  # not OperationalError('database is locked')\n"
        "    body = b''.join([*read, *export.chunks])\n"
        "    assert body == expected, fmt\n"
        "    assert f'written.mid.{fmt}'.encode() not in body\n"
        "    after = b''.join(selectors.export(fmt).chunks)\n"
        "    assert after.startswith(expected) and f'written.mid.{fmt}'.encode() in after[len(expected):], fmt\n"
        "    print(fmt, 'written mid-export', len(body))\n"
    )
    printed, _ = sqlite_shell(script)
    assert [line.split()[:3] for line in printed.splitlines()[-2:]] == [
        ["csv", "written", "mid-export"],
        ["ndjson", "written", "mid-export"],
    ]
