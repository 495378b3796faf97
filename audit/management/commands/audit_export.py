import contextlib
import fcntl
import glob
import os
import re
import shlex
import signal
import stat
import sys
import tempfile
import threading
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit import selectors
from audit.api.serializers import ExportQuery

# What `audit/chain.py` needs to verify an export filtered this way (see its --help), besides where the export
# starts and ends and how many events it holds (--expect-start, --expect-head, --expect-count), always given.
_GAPS = {"subject_type", "subject_id", "actor"}  # events missing in between


class Command(BaseCommand):
    help = (
        "Export audit events in chain order, as GET /api/v1/audit/events does (same formats, filters and "
        "bytes), straight from the database: to --output FILE (a new file, readable by its owner only, in "
        "place once complete) or to stdout. Where it starts (the first event's sequence number and prev_hash) "
        "and ends (the last event's sequence number and hash) and how many events it holds go to stderr, with the "
        "command that verifies the file."
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
            _write_whole(target, export.chunks, say=lambda message: self.stderr.write(message, str))
        summary = (
            f"Exported audit events from #{export.first_seq} (prev_hash {export.first_prev_hash}) "
            f"up to #{export.last_seq} (hash {export.last_hash}), {export.count} events, to {target or 'stdout'}."
        )
        if fmt == "ndjson":
            command = ["python", "audit/chain.py", str(target) if target else "FILE"]
            command += ["--allow-gaps"] if _GAPS & filters.keys() else []
            command += ["--expect-start", f"{export.first_seq}:{export.first_prev_hash}"]
            command += ["--expect-head", export.last_hash, "--expect-count", str(export.count)]
            summary += f"\nVerify (from the project directory): {shlex.join(command)}"
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


def _write_whole(path: Path, chunks, say=lambda message: None) -> None:
    """Into a temporary file beside `path`, flushed to disk and renamed over it once the last chunk is
    written: an export that fails midway (or a crash) leaves no file that looks complete, and one that
    fails or is stopped (Ctrl-C, SIGTERM) leaves no temporary file either. One killed outright (SIGKILL,
    the OOM killer, a power loss) cannot clean up: the next export to the same file removes what it left,
    and `say`s so."""
    fd, tmp, locked = _locked_temporary(path)
    try:
        with _sigterm_exits(), os.fdopen(fd, "wb") as f:
            if locked:  # where locks do not work, nothing tells an abandoned file from a running export's
                for name in _remove_abandoned(path, keep=tmp):
                    say(f"Removed {name}, left by an export to the same file that did not finish.")
            _write_back_early(f, chunks)
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


WRITE_BACK_EVERY = 32 << 20  # bytes


def _write_back_early(f, chunks) -> None:
    """Write the chunks to `f`, asking the kernel every WRITE_BACK_EVERY bytes to start writing them to disk.
    Left alone, the kernel holds a whole export (hundreds of MB) in the page cache until the final fsync,
    which then waits for all of it: a third of the command's time for 1M events. POSIX_FADV_DONTNEED starts
    writeback of a range's dirty pages without waiting and drops its clean ones, so each window is advised
    twice: once to start its writeback, and once more with the next window, to drop it from the cache."""
    previous = advised = written = 0  # previous: where the last advised window began
    for chunk in chunks:
        f.write(chunk)
        written += len(chunk)
        if written - advised >= WRITE_BACK_EVERY:
            f.flush()
            os.posix_fadvise(f.fileno(), previous, written - previous, os.POSIX_FADV_DONTNEED)
            previous, advised = advised, written
    f.flush()


# A running export holds an exclusive flock on its temporary file; the kernel releases it when the process
# ends, however it ends. So a temporary file of this shape that nobody holds was abandoned. Local
# filesystems only: where flock fails (some network mounts), exports go on without the clean-up.
_RANDOM = "[a-z0-9_]{8}"  # tempfile.mkstemp's part of the name
_ATTEMPTS = 10


def _locked_temporary(path: Path) -> tuple[int, str, bool]:
    """A new temporary file beside `path`, opened for writing, locked if the filesystem supports it."""
    for _ in range(_ATTEMPTS):
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        except OSError as exc:
            raise CommandError(f"--output {path}: cannot create a file in {path.parent}: {exc.strerror}.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another export's clean-up holds it, to remove it: take another name
            os.close(fd)
            continue
        except OSError:  # no working locks here
            return fd, tmp, False
        if os.fstat(fd).st_nlink:
            return fd, tmp, True
        os.close(fd)  # another export's clean-up removed it before we locked it: take another name
    raise CommandError(f"--output {path}: could not create a temporary file in {path.parent} that stayed ours.")


def _remove_abandoned(path: Path, keep: str) -> list[str]:
    shape = re.compile(rf"\.{re.escape(path.name)}\.{_RANDOM}\.partial")
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        if not shape.fullmatch(candidate.name) or str(candidate) == keep:
            continue
        try:  # O_RDWR: emulated flock wants a writable file; O_NONBLOCK: a FIFO must not stall the export
            fd = os.open(candidate, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode) or status.st_nlink == 0:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: an export is writing it
            # Removed by name: had its export renamed it into place meanwhile, the name is gone (ENOENT).
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
