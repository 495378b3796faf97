"""Log records that carry the request id, the actor and the Celery task, as JSON lines or plain text.

`LOG_FORMAT=json` (the default unless DJANGO_DEBUG=1) writes one JSON object per line:

    {"ts": "2026-01-02T03:04:05.678Z", "level": "INFO", "logger": "core.access", "message": "...",
     "request_id": "9f3c...", "actor": "ci-bot", "token_id": 7, "pid": 123, ...}

Celery tasks add "task_name" and "task_id"; `extra={...}` fields of a log call are added as keys.
Anything that looks like an API token, a webhook secret or a credential inside a URL is masked before
the line is written, so a careless log call cannot leak one.
"""

import datetime as dt
import json
import logging
import re
import traceback

from django.utils.functional import LazyObject, empty

from core import context, url_credentials
from core.errors import InvalidInput
from core.unicode import BEYOND_C0

# mgr_<prefix>_<secret> API tokens (accounts.services.token_create) and whsec_ webhook secrets: the
# public prefix is kept (it names the token in the admin), the secret part is masked.
_SECRETS = re.compile(r"\b(mgr_[0-9a-f]{6,16}_)[A-Za-z0-9_-]{8,}|\b(whsec_)[A-Za-z0-9+/=]{8,}")
MASK = "***"


def redact(text: str) -> str:
    """API tokens and webhook secrets masked, and credentials inside URLs (core.url_credentials)."""
    return url_credentials.mask(_SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + MASK, text))


def refuse_secret(field: str, text: str) -> None:
    """A name or description is listed, logged and kept in the append-only audit log: one holding what redact()
    masks (an API token, a webhook secret, a credential in a URL), pasted there by mistake, is refused."""
    if redact(text) != text:
        message = (
            f"The {field} holds what looks like a secret (an API token, a webhook secret or a credential in a URL); "
            f"a {field} is shown in lists and kept in the audit log for good. Remove it."
        )
        raise InvalidInput(message, detail={field: [message]})


# Control characters (C0, DEL, C1), the Unicode line and paragraph separators, which line-based readers (Python's
# splitlines, some log viewers) also break on, and the bidirectional overrides (core.unicode.BEYOND_C0). Unescaped
# in a text line, a request path holding %0a wrote a forged record of its own, an ESC sequence rewrites the
# terminal showing the log, and U+202E shows what follows it reversed.
_CONTROL = re.compile(f"[\\x00-\\x1f{BEYOND_C0}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape_controls(text: str) -> str:
    """A newline as `\\n`, ESC as `\\x1b`, ...: one log record stays one line, whatever it quotes."""
    return _CONTROL.sub(_escaped, text)


# json.dumps escapes C0 characters but writes the others as they are (ensure_ascii=False).
_JSON_UNESCAPED = re.compile(f"[{BEYOND_C0}]")


def _actor_name() -> str:
    """The current actor's username, without ever causing a query: a lazy request.user that nobody
    has looked at yet (e.g. an anonymous health check) is reported as "-"."""
    actor = context.actor.get()
    if actor is None:
        return "-"
    if isinstance(actor, LazyObject):
        wrapped = actor._wrapped
        if wrapped is empty:
            return "-"
        actor = wrapped
    if isinstance(actor, str):
        return actor
    if getattr(actor, "is_authenticated", False):
        return actor.get_username()
    return "anonymous"


def _current_task():
    try:
        from celery._state import get_current_task
    except ImportError:  # pragma: no cover - celery is a dependency
        return None
    return get_current_task()


class RequestIdFilter(logging.Filter):
    """Adds request_id, actor, token_id, task_name and task_id to every record (for either format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = context.request_id.get() or "-"
        record.actor = _actor_name()
        record.token_id = context.token_id.get()
        record.task_name, record.task_id = context.task.get() or _celery_task()
        return True


def _celery_task() -> tuple[str | None, str | None]:
    """Celery's current task (a thread-local): for a task run where the prerun signal set no context."""
    task = _current_task()
    if task is not None and getattr(task, "request", None) is not None and task.request.id:
        return task.name, task.request.id
    return None, None


# Attributes every LogRecord has; anything else on a record came from `extra=` (or our filter).
# "request" (Django's request object, whose repr holds the query string) and "task" (TextFormatter's) are
# left out on purpose.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "request",
    "task",
}
_OURS = ("request_id", "actor", "token_id", "task_name", "task_id")


def _jsonable(value):
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Values that are not JSON types are written as their str()."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _OURS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        entry["pid"] = record.process
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _OURS and key not in entry and not key.startswith("_"):
                entry[key] = _jsonable(value)
        if record.exc_info:
            entry["exc_info"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = record.stack_info
        # Masked before encoding (values are str or scalars here): in the encoded line an escape (a newline's `\n`
        # right before a URL, a quote's `\"` in a value) would hide a URL's scheme from the masking, or be cut by it.
        entry = {key: redact(value) if isinstance(value, str) else value for key, value in entry.items()}
        line = json.dumps(entry, ensure_ascii=False, default=str)
        return _JSON_UNESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


class TextFormatter(logging.Formatter):
    """Human-readable lines for local development, with the same redaction as JSON. Control characters in
    the message and fields are escaped, and a traceback's lines are indented under their record: only a
    record starts a line at column 0, so nothing a client sends can pass for one."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s %(actor)s%(task)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.task = f" {record.task_name}[{record.task_id}]" if getattr(record, "task_name", None) else ""
        for key in ("request_id", "actor"):
            if not hasattr(record, key):
                setattr(record, key, "-")
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        text = escape_controls(redact(self.formatMessage(record)))  # masked first, as in JSON lines
        details = [self.formatException(record.exc_info) if record.exc_info else record.exc_text]
        details.append(self.formatStack(record.stack_info) if record.stack_info else None)
        for detail in filter(None, details):
            text += "".join(f"\n    {escape_controls(line)}" for line in redact(detail).splitlines())
        return text
