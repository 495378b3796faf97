"""manage.py audit_export: the API's export (same bytes, formats and filters) straight to a file or stdout."""

import errno
import fcntl
import io
import json
import os
import shlex
import signal
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from audit import chain
from audit.management.commands.audit_export import _write_whole
from audit.models import format_time
from tests.test_audit_export import CHAIN_SCRIPT, URL, auditor, log  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db


def export(*args: str) -> str:
    """Runs the command; returns what it wrote to stderr (the summary)."""
    err = io.StringIO()
    call_command("audit_export", *args, stderr=err)
    return err.getvalue()


def verify_command(summary: str) -> list[str]:
    """The command the summary says verifies the export, as argv after `python`."""
    line = summary.splitlines()[-1]
    assert line.startswith("Verify (from the project directory): python "), summary
    return shlex.split(line.split(": python ", 1)[1])


def api_body(client, **params) -> bytes:
    response = client.get(URL, params)
    assert response.status_code == 200
    return b"".join(response.streaming_content)


def test_writes_the_api_export_byte_for_byte_and_says_how_to_verify_it(auditor, log, tmp_path):  # noqa: F811
    out = tmp_path / "audit.ndjson"
    summary = export("--output", str(out))
    assert out.read_bytes() == api_body(auditor)
    assert f"#{log[-1].seq} (hash {log[-1].hash}), {len(log)} events," in summary
    verify = verify_command(summary)
    start = f"1:{chain.GENESIS}"
    head = ["--expect-head", log[-1].hash, "--expect-count", str(len(log))]
    assert verify == ["audit/chain.py", str(out), "--expect-start", start, *head]
    assert out.stat().st_mode & 0o777 == 0o600  # audit data: the owner's only
    result = subprocess.run([sys.executable, str(CHAIN_SCRIPT), *verify[1:]], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "params", "flags"),
    [
        (
            ["--subject-type", "registry.model", "--subject-id", "7"],
            {"subject_type": "registry.model", "subject_id": "7"},
            ["--allow-gaps"],
        ),
        (["--actor", "ci_bot"], {"actor": "ci_bot"}, ["--allow-gaps"]),
        (["--after-seq", "3"], {"after_seq": "3"}, []),
        (
            ["--since", "2000-01-01T00:00:00Z", "--actor", "owner"],
            {"since": "2000-01-01T00:00:00Z", "actor": "owner"},
            ["--allow-gaps"],
        ),
    ],
)
def test_filters_select_what_the_api_selects(auditor, log, tmp_path, args, params, flags):  # noqa: F811
    out = tmp_path / "audit.ndjson"
    summary = export("--output", str(out), *args)
    body = out.read_bytes()
    assert body == api_body(auditor, **params)
    assert body  # the filter matched something, so the comparison means something
    verify = verify_command(summary)
    first = json.loads(body.split(b"\n", 1)[0])
    assert verify[2:-4] == [*flags, "--expect-start", f"{first['seq']}:{first['prev_hash']}"]
    assert verify[-2:] == ["--expect-count", str(body.count(b"\n"))]
    result = subprocess.run([sys.executable, str(CHAIN_SCRIPT), *verify[1:]], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("args", [["--subject-type", "registry.model", "--subject-id", "8"], ["--actor", "owner"]])
def test_the_printed_command_fails_on_an_event_removed_from_a_filtered_export(log, tmp_path, args):  # noqa: F811
    """With --allow-gaps, sequence numbers only have to increase: only --expect-count shows that no event was removed
    from between the first and the last (the start and the head are still there)."""
    out = tmp_path / "audit.ndjson"
    verify = verify_command(export("--output", str(out), *args))
    assert "--allow-gaps" in verify
    lines = out.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 3
    assert verify[-2:] == ["--expect-count", str(len(lines))]
    run = [sys.executable, str(CHAIN_SCRIPT), *verify[1:]]
    result = subprocess.run(run, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

    out.write_bytes(b"".join([lines[0], *lines[2:]]))
    result = subprocess.run(run, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    expected = f"the file holds {len(lines) - 1} events but the registry selected {len(lines)}: events were removed"
    assert expected in result.stderr
    without_count = subprocess.run(run[:-2], capture_output=True, text=True)
    assert without_count.returncode == 0, without_count.stderr  # what the count adds


def test_csv_to_stdout(auditor, log, capsysbinary):  # noqa: F811
    call_command("audit_export", "--format", "csv", stderr=io.StringIO())
    assert capsysbinary.readouterr().out == api_body(auditor, format="csv")


def test_ndjson_to_stdout_says_how_to_verify_the_saved_output(auditor, log, capsysbinary):  # noqa: F811
    summary = export()
    assert capsysbinary.readouterr().out == api_body(auditor)
    start = f"1:{chain.GENESIS}"
    head = ["--expect-head", log[-1].hash, "--expect-count", str(len(log))]
    assert verify_command(summary) == ["audit/chain.py", "FILE", "--expect-start", start, *head]


def test_a_symlinked_output_is_written_at_its_target(auditor, log, tmp_path):  # noqa: F811
    target, link = tmp_path / "evidence.ndjson", tmp_path / "latest.ndjson"
    target.write_bytes(b"last month's export\n")
    link.symlink_to(target)
    export("--output", str(link))
    assert link.is_symlink()
    assert target.read_bytes() == api_body(auditor)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "xml"], "--format"),
        (["--since", "yesterday"], "--since"),
        (["--after-seq", "-1"], "--after-seq"),
        (
            ["--after-seq", "99999999999999999999"],
            "--after-seq: Ensure this value is less than or equal to 9223372036854775807",
        ),
        (["--output", "/nonexistent-dir/audit.ndjson"], "does not exist"),
        (["--output", "/dev/null"], "not a regular file"),
    ],
)
def test_bad_options_are_refused_and_write_nothing(log, tmp_path, args, message, capsysbinary):  # noqa: F811
    with pytest.raises(CommandError, match=message):
        export(*args)
    assert capsysbinary.readouterr().out == b""


def test_a_bad_filter_with_an_output_file_creates_no_file(log, tmp_path):  # noqa: F811
    with pytest.raises(CommandError, match="--since"):
        export("--output", str(tmp_path / "audit.ndjson"), "--since", "last tuesday")
    assert list(tmp_path.iterdir()) == []


def test_an_output_directory_is_refused(log, tmp_path):  # noqa: F811
    with pytest.raises(CommandError, match="is not a regular file"):
        export("--output", str(tmp_path))


def test_early_write_back_keeps_every_byte(tmp_path, monkeypatch):
    """A window of a few bytes, so most chunks start a write-back and drop the previous window from the cache."""
    from audit.management.commands import audit_export

    monkeypatch.setattr(audit_export, "WRITE_BACK_EVERY", 5)
    chunks = [bytes([65 + i % 26]) * (i % 7 + 1) for i in range(500)]
    out = tmp_path / "audit.ndjson"
    _write_whole(out, iter(chunks))
    assert out.read_bytes() == b"".join(chunks)


def test_an_export_that_fails_midway_leaves_the_previous_file_and_no_partial_one(tmp_path):
    out = tmp_path / "audit.ndjson"
    out.write_bytes(b"the previous export\n")

    def chunks():
        yield b'{"seq":1}\n'
        raise ConnectionError("the database went away")

    with pytest.raises(ConnectionError):
        _write_whole(out, chunks())
    assert out.read_bytes() == b"the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.ndjson"]


def test_an_empty_selection_exports_an_empty_file_with_the_genesis_head(db, tmp_path):
    out = tmp_path / "audit.ndjson"
    summary = export("--output", str(out), "--after-seq", "999999")
    assert out.exists() and out.read_bytes() == b""
    assert f"up to #0 (hash {chain.GENESIS}), 0 events," in summary
    assert verify_command(summary)[-2:] == ["--expect-count", "0"]


def test_an_export_stopped_by_sigterm_leaves_no_partial_file(tmp_path):
    out = tmp_path / "audit.ndjson"

    def chunks():
        yield b'{"seq":1}\n'
        os.kill(os.getpid(), signal.SIGTERM)  # what `kill` or a container stop sends
        yield b'{"seq":2}\n'

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        _write_whole(out, chunks())
    assert stopped.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before  # the handler was put back


# An export in a process of its own, writing `out` through _write_whole: one chunk (its temporary file is then
# created and locked), then THEN.
EXPORTER = """
import os, signal, sys
from pathlib import Path
import django
django.setup()
from audit.management.commands.audit_export import _write_whole
def chunks():
    yield b'{"seq":1}\\n'
    THEN
_write_whole(Path(sys.argv[1]), chunks())
"""


def exporter(out, then: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", EXPORTER.replace("THEN", then), str(out)],
        cwd=settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def partials(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def test_a_killed_exports_temporary_file_is_removed_by_the_next_export(log, tmp_path):  # noqa: F811
    out = tmp_path / "audit.ndjson"
    killed = exporter(out, "os.kill(os.getpid(), signal.SIGKILL)")  # what the OOM killer does
    assert killed.wait(timeout=60) == -signal.SIGKILL, killed.stderr.read().decode()
    [left] = partials(tmp_path)
    assert not out.exists()

    summary = export("--output", str(out))
    assert partials(tmp_path) == []
    assert f"Removed {left}, left by an export to the same file that did not finish." in summary
    assert out.read_bytes().count(b"\n") == len(log)  # the export itself is whole


def test_a_running_exports_temporary_file_is_left_alone(log, tmp_path):  # noqa: F811
    out = tmp_path / "audit.ndjson"
    # says when its temporary file is locked and written to, then holds it until told to finish
    running = exporter(out, "print('ready', flush=True); sys.stdin.read()")
    try:
        assert running.stdout.readline() == b"ready\n", running.stderr.read().decode()
        [theirs] = partials(tmp_path)
        summary = export("--output", str(out))
        assert "Removed" not in summary
        assert partials(tmp_path) == [theirs]
        assert out.read_bytes().count(b"\n") == len(log)
    finally:
        running.stdin.close()
        assert running.wait(timeout=60) == 0, running.stderr.read().decode()
    assert partials(tmp_path) == []
    assert out.read_bytes() == b'{"seq":1}\n'  # the other export finished later and replaced it


def test_time_filters_select_one_contiguous_run_that_verifies(auditor, log, tmp_path):  # noqa: F811
    """Event times follow the chain, so since/until cut the log once each: the run the verifier is told to expect
    starts later than sequence 1 with since, at sequence 1 (genesis) without."""
    since, until = format_time(log[len(log) // 2].at), format_time(log[-2].at)
    for args in (["--since", since], ["--until", until], ["--since", since, "--until", until]):
        out = tmp_path / "audit.ndjson"
        summary = export("--output", str(out), *args)
        body = out.read_bytes()
        params = dict(zip([a.lstrip("-") for a in args[::2]], args[1::2], strict=True))
        assert body == api_body(auditor, **params)
        events = [json.loads(line) for line in body.splitlines()]
        seqs = [event["seq"] for event in events]
        assert seqs and seqs == list(range(seqs[0], seqs[-1] + 1))
        assert (seqs[0] == 1) == ("--since" not in args)
        verify = verify_command(summary)
        assert verify[2:-4] == ["--expect-start", f"{seqs[0]}:{events[0]['prev_hash']}"]
        assert verify[-2:] == ["--expect-count", str(len(seqs))]
        result = subprocess.run([sys.executable, str(CHAIN_SCRIPT), *verify[1:]], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_clean_up_takes_only_abandoned_temporary_files_of_this_export(log, tmp_path):  # noqa: F811
    """Only names of mkstemp's shape for this very file, only regular files: not another file's, not a
    file someone named like one, and a FIFO does not stall the export."""
    out = tmp_path / "audit.ndjson"
    others = [".audit.ndjson.bak.partial", ".audit.ndjson.x.k3j4h5g6.partial", ".audit.ndjson.k3j4h5g6.x.partial"]
    for name in others:
        (tmp_path / name).write_bytes(b"someone's\n")
    os.mkfifo(tmp_path / ".audit.ndjson.abcd1234.partial")
    summary = export("--output", str(out))
    assert "Removed" not in summary
    assert partials(tmp_path) == sorted([*others, ".audit.ndjson.abcd1234.partial"])
    assert out.read_bytes().count(b"\n") == len(log)


def test_without_working_locks_the_export_goes_on_without_the_clean_up(log, tmp_path, monkeypatch):  # noqa: F811
    """Some network filesystems refuse flock: nothing then tells an abandoned file from a running export's."""
    out = tmp_path / "audit.ndjson"
    (tmp_path / ".audit.ndjson.abcd1234.partial").write_bytes(b"maybe someone's\n")

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    summary = export("--output", str(out))
    assert "Removed" not in summary
    assert partials(tmp_path) == [".audit.ndjson.abcd1234.partial"]
    assert out.read_bytes().count(b"\n") == len(log)
