import contextlib
import fcntl
import glob
import os
import shlex
import signal
import sys
import tempfile
import threading
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit import selectors
from audit.api.serializers import ExportQuery

# What `audit/chain.py` needs to verify an export filtered this way (see its --help).
_GAPS = {"subject_type", "subject_id", "actor"}  # events missing in between
_LATER_START = {"since", "after_seq"}  # a contiguous run that does not start at sequence 1


class Command(BaseCommand):
    help = (
        "Export audit events in chain order, as GET /api/v1/audit/events does (same formats, filters and "
        "bytes), straight from the database: to --output FILE (a new file, readable by its owner only, in "
        "place once complete) or to stdout. The last event's sequence number and hash go to stderr, with "
        "the command that verifies the file."
    )
    # Django's system checks load the URLconf and every view (13 MB): nothing an export reads from.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--format", default="ndjson", help="ndjson (default) or csv")
        parser.add_argument("--output", "-o", default="-", help="a file, or - for stdout (default)")
        parser.add_argument("--since", help="events at or after this time (RFC 3339)")
        parser.add_argument("--until", help="events before this time (RFC 3339)")
        parser.add_argument("--subject-type")
        parser.add_argument("--subject-id")
        parser.add_argument("--actor", help="actor username")
        parser.add_argument("--after-seq", help="events after this sequence number")

    def handle(self, *args, **options):
        given = {k: options[k] for k in ExportQuery().fields if options.get(k) is not None}
        query = ExportQuery(data=given)
        if not query.is_valid():
            raise CommandError(
                "; ".join(
                    f"--{field.replace('_', '-')}: {' '.join(map(str, errors))}"
                    for field, errors in query.errors.items()
                )
            )
        filters = dict(query.validated_data)
        fmt = filters.pop("format")
        target = None if options["output"] == "-" else _output_path(options["output"])
        export = selectors.export(fmt, **filters)
        if target is None:
            self._to_stdout(export.chunks)
        else:
            for name in _write_whole(target, export.chunks):
                self.stderr.write(f"Removed {name}, left by an export to the same file that did not finish.", str)
        summary = f"Exported audit events up to #{export.last_seq} (hash {export.last_hash}) to {target or 'stdout'}."
        if fmt == "ndjson":
            flag = "--allow-gaps" if _GAPS & filters.keys() else "--partial" if _LATER_START & filters.keys() else ""
            command = ["python", "audit/chain.py", str(target) if target else "FILE", flag, "--expect-head"]
            summary += f"\nVerify (from the project directory): {shlex.join(filter(None, command))} {export.last_hash}"
        self.stderr.write(summary, style_func=str)  # not an error, whatever a terminal's styling says

    def _to_stdout(self, chunks) -> None:
        out = getattr(self.stdout._out, "buffer", self.stdout._out)  # the bytes under the text stream
        try:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # the interpreter's own flush at exit
            raise CommandError(
                "stdout was closed before the export ended (e.g. by `head`): it is incomplete."
            ) from None


def _output_path(given: str) -> Path:
    path = Path(os.path.realpath(given))  # write beside a symlink's target, not over the link
    if path.exists() and not path.is_file():
        raise CommandError(f"--output {given} is not a regular file: name a file, or - for stdout.")
    if not path.parent.is_dir():
        raise CommandError(f"--output {given}: the directory {path.parent} does not exist.")
    return path


def _write_whole(path: Path, chunks) -> list[str]:
    """Into a temporary file beside `path`, flushed to disk and renamed over it once the last chunk is
    written: an export that fails midway (or a crash) leaves no file that looks complete, and one that
    fails or is stopped (Ctrl-C, SIGTERM) leaves no temporary file either. One killed outright (SIGKILL,
    the OOM killer, a power loss) cannot clean up: the next export to the same file removes what it left
    (returned, by name)."""
    removed = _remove_abandoned(path)
    fd, tmp = _locked_temporary(path)
    try:
        with _sigterm_exits(), os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # still locked: no other export's clean-up takes it for abandoned
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself
    finally:
        os.close(directory)
    return removed


# A running export holds an exclusive flock on its temporary file; the kernel releases it when the process
# ends, however it ends. So a temporary file nobody holds was abandoned.


def _locked_temporary(path: Path) -> tuple[int, str]:
    while True:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        except OSError as exc:
            raise CommandError(f"--output {path}: cannot create a file in {path.parent}: {exc.strerror}.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_nlink:
                return fd, tmp
        except BlockingIOError:
            pass
        os.close(fd)  # another export's clean-up took it between its creation and the lock: another name


def _remove_abandoned(path: Path) -> list[str]:
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: an export is writing it
            if os.fstat(fd).st_nlink:  # not renamed or removed by its export in the meantime
                os.unlink(candidate)
                removed.append(candidate.name)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def _sigterm_exits():
    """SIGTERM ends the process through SystemExit (as Ctrl-C does through KeyboardInterrupt), so the
    cleanup above runs; Python's default is to die on the spot."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
