"""Where an audit export starts: the registry says it (X-Audit-First-Seq, X-Audit-First-Prev-Hash, and audit_export
on stderr), and audit/chain.py --expect-start checks it, so events cut from the start of a filtered export fail.

A review cut the first three lines of an `after_seq` export (a token.created among them); `--partial --expect-head`
still said OK, as nothing told the verifier where the file should start.
"""

import io
import json
import shlex

import pytest
from django.core.management import call_command

from audit import chain
from audit.models import format_time
from tests.test_audit_chain import (  # noqa: F401 - exported is a fixture
    assert_fails_at,
    assert_same_verdict,
    exported,
    head_of,
    run_verifier,
    synthetic_lines,
)
from tests.test_audit_export import URL, auditor, log  # noqa: F401 - fixtures

GENESIS = chain.GENESIS


def start_of(lines: list[bytes]) -> str:
    """--expect-start for these lines, as the registry states it: the first event's seq and prev_hash."""
    first = json.loads(lines[0])
    return f"{first['seq']}:{first['prev_hash']}"


# --- the verifier -----------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("count", [12, 4000], ids=["one-block", "many-blocks"])
def test_events_cut_from_the_start_fail(tmp_path, jobs, count):
    """The review's case (after_seq=30, first 3 lines cut), through the batch path and worker processes alike."""
    lines = synthetic_lines(30 + count)
    export, head = lines[30:], head_of(lines)  # after_seq=30
    start = start_of(export)
    assert start == f"31:{json.loads(lines[29])['hash']}"
    result = run_verifier(tmp_path, export, "--expect-start", start, "--expect-head", head, "--jobs", jobs)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.strip() == f"OK: {count} events verified; last hash {head}"

    cut = export[3:]
    assert run_verifier(tmp_path, cut, "--partial", "--expect-head", head, "--jobs", jobs).returncode == 0  # as before
    result = run_verifier(tmp_path, cut, "--expect-start", start, "--expect-head", head, "--jobs", jobs)
    assert_fails_at(result, 34, line=1)
    assert "expected the export to start at sequence 31: sequences 31 to 33 are missing" in result.stderr
    assert_same_verdict(result, cut, from_genesis=False, expect_start=(31, start.split(":")[1]))


def test_a_first_event_that_links_elsewhere_fails(tmp_path):
    """Same sequence numbers, hashes and links within the file, but the first event follows another chain."""
    lines = synthetic_lines(20)
    forged = synthetic_lines(10, start=11, prev="f" * 64)
    result = run_verifier(tmp_path, forged, "--expect-start", start_of(lines[10:]))
    assert_fails_at(result, 11, line=1)
    assert "prev_hash is not the expected start's" in result.stderr
    assert run_verifier(tmp_path, forged, "--partial").returncode == 0  # nothing else in the file shows it


def test_an_event_added_before_the_start_fails(tmp_path):
    lines = synthetic_lines(20)
    result = run_verifier(tmp_path, lines[9:], "--expect-start", start_of(lines[10:]))
    assert_fails_at(result, 10, line=1)
    assert "expected the export to start at sequence 11: events were added" in result.stderr


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_an_empty_export_is_said_to_start_at_zero(tmp_path, jobs):
    """An empty export starts (and ends) at 0 and the genesis hash: the file must then hold nothing, and a file
    emptied of the events it should start with fails."""
    lines = synthetic_lines(5)
    empty = run_verifier(tmp_path, [], "--expect-start", f"0:{GENESIS}", "--expect-head", GENESIS, "--jobs", jobs)
    assert (empty.returncode, empty.stdout.strip()) == (0, f"OK: 0 events verified; last hash {GENESIS}")
    added = run_verifier(tmp_path, lines, "--expect-start", f"0:{GENESIS}", "--jobs", jobs)
    assert_fails_at(added, 1, line=1)
    assert "expected no event (the export was said to be empty)" in added.stderr
    emptied = run_verifier(tmp_path, [], "--expect-start", start_of(lines[2:]), "--jobs", jobs)
    assert_fails_at(emptied, 3, line=1)
    assert "no event, but the export was said to start at sequence 3" in emptied.stderr
    with pytest.raises(chain.ChainError, match="said to start at sequence 3"):
        chain.verify_events([], expect_start=(3, "a" * 64))
    with pytest.raises(chain.ChainError, match="said to start at sequence 3"):
        chain.verify_lines([], expect_start=(3, "a" * 64))


def test_a_filtered_export_starts_at_its_first_selected_event(tmp_path):
    """Subject or actor filters: the start is the first event the filter selected (not after_seq + 1), linking to
    an event outside the file; cutting it fails even with gaps allowed."""
    lines = synthetic_lines(20)
    gappy = lines[4:6] + lines[9:12] + lines[15:]  # sequences 5-6, 10-12, 16-20
    start = start_of(gappy)
    result = run_verifier(tmp_path, gappy, "--allow-gaps", "--expect-start", start, "--expect-head", head_of(lines))
    assert result.returncode == 0, result.stderr
    assert "nothing showed that no event is missing from the start" not in result.stderr
    result = run_verifier(tmp_path, gappy[2:], "--allow-gaps", "--expect-start", start)
    assert_fails_at(result, 10, line=1)
    assert "sequences 5 to 9 are missing" in result.stderr
    unchecked = run_verifier(tmp_path, gappy[2:], "--allow-gaps")
    assert unchecked.returncode == 0
    assert "nothing showed that no event is missing from the start; pass --expect-start" in unchecked.stderr


@pytest.mark.parametrize(
    "value",
    ["31", f"31:{'A' * 64}", f"31:{'a' * 63}", f"-1:{GENESIS}", f"x:{GENESIS}", f"1:{'a' * 64}", f"0:{'a' * 64}"],
)
def test_a_bad_expected_start_is_a_usage_error(tmp_path, value):
    result = run_verifier(tmp_path, synthetic_lines(3), f"--expect-start={value}")
    assert result.returncode == 2, result.stderr
    assert "argument --expect-start" in result.stderr
    assert "expected SEQ:PREV_HASH" in result.stderr or "goes with the genesis hash" in result.stderr
    assert "OK" not in result.stdout


# --- the registry states the start ----------------------------------------------------------


def first_line_of(body: bytes) -> dict:
    return json.loads(body.split(b"\n", 1)[0])


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_the_api_states_where_the_export_starts(auditor, log, fmt):  # noqa: F811
    by_seq = {e.seq: e for e in log}
    since = next(e for e in log if e.at >= log[6].at)  # log[6], unless it shares its time with the one before
    subject = [e for e in log if (e.subject_type, e.subject_id) == ("registry.model", "8")]
    for params, first in [
        ({}, log[0]),
        ({"after_seq": log[4].seq}, log[5]),
        ({"since": format_time(since.at)}, since),
        ({"subject_type": "registry.model", "subject_id": "8"}, subject[0]),
        ({"subject_type": "registry.model", "subject_id": "8", "after_seq": subject[0].seq}, subject[1]),
    ]:
        response = auditor.get(URL, {"format": fmt, **params})
        assert response.status_code == 200
        assert response["X-Audit-First-Seq"] == str(first.seq), params
        assert response["X-Audit-First-Prev-Hash"] == first.prev_hash
        body = b"".join(response.streaming_content)
        if fmt == "ndjson":
            assert first_line_of(body)["seq"] == first.seq
        if first.seq > 1:
            assert first.prev_hash == by_seq[first.seq - 1].hash  # the event just before, exported or not
    assert log[0].prev_hash == GENESIS
    response = auditor.get(URL, {"format": fmt, "after_seq": log[-1].seq})
    assert b"".join(response.streaming_content).count(b"\n") == (fmt == "csv")
    assert [response[h] for h in ("X-Audit-First-Seq", "X-Audit-First-Prev-Hash")] == ["0", GENESIS]
    assert [response[h] for h in ("X-Audit-Last-Seq", "X-Audit-Last-Hash")] == ["0", GENESIS]


def test_the_reviewed_cut_fails_with_the_api_headers(auditor, log, tmp_path):  # noqa: F811
    after = log[4].seq
    response = auditor.get(URL, {"after_seq": after})
    lines = b"".join(response.streaming_content).splitlines(keepends=True)
    args = [
        "--expect-start",
        f"{response['X-Audit-First-Seq']}:{response['X-Audit-First-Prev-Hash']}",
        "--expect-head",
        response["X-Audit-Last-Hash"],
    ]
    assert response["X-Audit-First-Seq"] == str(after + 1)
    assert run_verifier(tmp_path, lines, *args).returncode == 0
    assert_fails_at(run_verifier(tmp_path, lines[3:], *args), after + 4, line=1)
    response = auditor.get(URL, {"after_seq": log[-1].seq})
    empty = b"".join(response.streaming_content)
    args = ["--expect-start", f"{response['X-Audit-First-Seq']}:{response['X-Audit-First-Prev-Hash']}"]
    assert run_verifier(tmp_path, [empty], *args, "--expect-head", response["X-Audit-Last-Hash"]).returncode == 0


def export_command(*args: str) -> tuple[str, list[str]]:
    """audit_export's summary and the verify command it prints, as argv after `python`."""
    err = io.StringIO()
    call_command("audit_export", *args, stderr=err)
    summary = err.getvalue()
    return summary, shlex.split(summary.splitlines()[-1].split(": python ", 1)[1])


@pytest.mark.parametrize(
    ("args", "first", "flags"),
    [
        ([], 0, []),
        (["--after-seq", "4"], 4, []),
        (["--since", "SINCE"], 6, []),
        (["--subject-type", "registry.model", "--subject-id", "8"], "subject", ["--allow-gaps"]),
    ],
)
def test_audit_export_prints_the_start_and_verifies_it(log, tmp_path, args, first, flags):  # noqa: F811
    if first == "subject":
        selected = [e for e in log if (e.subject_type, e.subject_id) == ("registry.model", "8")]
    else:
        since = "--since" in args  # log[6], unless it shares its time with the one before
        selected = [e for e in log if e.at >= log[first].at] if since else log[first:]
    first, last = selected[0], selected[-1]
    args = [format_time(log[6].at) if a == "SINCE" else a for a in args]
    out = tmp_path / "audit.ndjson"
    summary, verify = export_command("--output", str(out), *args)
    assert f"from #{first.seq} (prev_hash {first.prev_hash}) up to #{last.seq} (hash {last.hash})" in summary
    start = f"{first.seq}:{first.prev_hash}"
    head = ["--expect-head", last.hash, "--expect-count", str(len(selected))]
    assert verify == ["audit/chain.py", str(out), *flags, "--expect-start", start, *head]
    lines = out.read_bytes().splitlines(keepends=True)
    assert run_verifier(tmp_path, lines, *verify[2:]).returncode == 0
    assert_fails_at(run_verifier(tmp_path, lines[1:], *verify[2:]), json.loads(lines[1])["seq"], line=1)


def test_audit_export_of_nothing_says_it_starts_at_zero(db, tmp_path):
    out = tmp_path / "audit.ndjson"
    summary, verify = export_command("--output", str(out), "--after-seq", "999999")
    assert f"from #0 (prev_hash {GENESIS}) up to #0 (hash {GENESIS})" in summary
    assert verify[2:] == ["--expect-start", f"0:{GENESIS}", "--expect-head", GENESIS, "--expect-count", "0"]
    assert run_verifier(tmp_path, [out.read_bytes()], *verify[2:]).returncode == 0
    assert run_verifier(tmp_path, synthetic_lines(2), *verify[2:]).returncode == 1


def test_stdout_export_prints_the_start(log, capsysbinary):  # noqa: F811
    summary, verify = export_command("--after-seq", str(log[2].seq))
    assert json.loads(capsysbinary.readouterr().out.split(b"\n", 1)[0])["seq"] == log[3].seq
    start = f"{log[3].seq}:{log[2].hash}"
    head = ["--expect-head", log[-1].hash, "--expect-count", str(len(log) - 3)]
    assert verify == ["audit/chain.py", "FILE", "--expect-start", start, *head]
