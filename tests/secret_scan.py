"""Secret scan across the whole pytest session: no API token or host credential value may leak into
logs, audit events or API responses.

How it works (installed by tests/conftest.py for every session):

- Secrets are recorded as tests create them: every API token that passes through
  `ApiToken.hash_token` (minted or presented; only values of the token format `mgr_<prefix>_<secret>`),
  every host credential resolved by `governance.deployment.resolve_credentials` or handed to a host
  adapter in a `ReleaseSpec`, and the values of environment variables that targets' `credentials_ref`
  (env:VAR) name, read while the test that created the target still runs.
- Outputs are captured per test: every log record (any logger, formatted with its traceback), every
  API response body (streamed ones as they stream; the one response that legitimately shows a new
  token, POST /api/v1/tokens/ -> 201, is kept without its `token` field), and the before/after/reason
  JSON of every audit event written in this process.
- At the end of each test the captured outputs are searched for every secret known so far, and
  findings are kept. When the session ends, each process (each pytest-xdist worker) also searches the
  log files under DATA_DIR and its pytest temporary directory, and the run fails naming each leak
  (tests/conftest.py, pytest_sessionfinish; the verdict is printed in the "secret scan" section).

Tests that plant leaks on purpose (the scanner's own tests) carry @pytest.mark.plants_secrets: the
session scanner ignores what they capture.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

WORD_CHAR = r"[A-Za-z0-9_\-]"  # what a token's secret part is made of
WORD = re.compile(f"{WORD_CHAR}+")
TOKEN_FORMAT = re.compile(rf"^mgr_[0-9a-f]{{12}}_{WORD_CHAR}{{20,}}$")
MAX_CAPTURE_PER_TEST = 8 * 1024 * 1024  # bytes of response bodies kept per test (enough for every API page)
ACTIVE: list[SecretScanner] = []
_lock = threading.Lock()


@dataclass
class Finding:
    secret_label: str
    where: str
    context: str

    def __str__(self) -> str:
        return f"{self.secret_label} found in {self.where}: ...{self.context}..."


@dataclass
class SecretScanner:
    secrets: dict[str, str] = field(default_factory=dict)  # value -> label (never printed whole)
    env_refs: set[str] = field(default_factory=set)
    captured: list[tuple[str, str]] = field(default_factory=list)  # (where, text)
    captured_bytes: int = 0
    findings: list[Finding] = field(default_factory=list)
    log_roots: list[Path] = field(default_factory=list)  # the session scan's log files: pytest's temporary folder
    # The index scan_text searches by: secrets of word characters (every API token and its secret part,
    # most credentials) by length; the others, few, one by one.
    words_by_length: dict[int, set[str]] = field(default_factory=dict)
    others: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(
        default_factory=lambda: {"tokens": 0, "credentials": 0, "responses": 0, "log_records": 0, "audit_events": 0}
    )

    # --- recording secrets
    def add_secret(self, value: str | None, kind: str) -> None:
        if not value or len(value) < 8 or value in self.secrets:
            return
        self._index(value, f"{kind} {value[:8]}…")
        self.stats["tokens" if kind == "API token" else "credentials"] += 1
        if kind == "API token":  # the secret part alone is as bad as the whole token
            self._index(value.split("_", 2)[2], f"{kind} {value[:8]}… (its secret part)")

    def _index(self, value: str, label: str) -> None:
        if value in self.secrets:
            return
        self.secrets[value] = label
        if WORD.fullmatch(value):
            self.words_by_length.setdefault(len(value), set()).add(value)
        else:
            self.others.append(value)

    def read_env_refs(self) -> None:
        for name in self.env_refs:
            self.add_secret(os.environ.get(name), f"host credential (env {name})")

    # --- capturing outputs
    def capture(self, where: str, text: str, kind: str) -> None:
        with _lock:
            if self.captured_bytes > MAX_CAPTURE_PER_TEST:
                return
            self.captured.append((where, text))
            self.captured_bytes += len(text)
            self.stats[kind] += 1

    def scan_text(self, where: str, text: str) -> list[Finding]:
        """Every secret found in `text`, at its first place. A secret of word characters lies inside a run of
        them at least as long as itself, so each run is looked up window by window in the index: a search
        for each of the session's thousands of tokens in turn made the scan a seventh of the suite's time."""
        first: dict[str, int] = {}
        for value in self.others:
            at = text.find(value)
            if at >= 0:
                first[value] = at
        lengths = sorted(self.words_by_length)
        if lengths:
            for run in re.finditer(rf"{WORD_CHAR}{{{lengths[0]},}}", text):
                word = run.group()
                for length in lengths:
                    values = self.words_by_length[length]
                    for i in range(len(word) - length + 1):
                        if (piece := word[i : i + length]) in values:
                            first.setdefault(piece, run.start() + i)
        found = []
        for value, at in sorted(first.items(), key=lambda item: item[1]):
            context = text[max(0, at - 60) : at].replace(value, "<secret>") + "<secret>"
            found.append(Finding(self.secrets[value], where, context[-120:]))
        return found

    def flush(self, test_id: str = "") -> list[Finding]:
        """Search everything captured since the last flush for every known secret; keep the findings."""
        with _lock:
            captured, self.captured, self.captured_bytes = self.captured, [], 0
        found = []
        for where, text in captured:
            found += self.scan_text(f"{where} during {test_id}" if test_id else where, text)
        self.findings += found
        return found

    def session_result(self, log_roots: list[Path]) -> dict:
        """What this process found over the session, the log files under `log_roots` included, in plain
        types (a pytest-xdist worker sends it to the process that gives the verdict)."""
        self.flush("the session")
        self.scan_files(log_roots)
        return {
            "findings": [str(f) for f in self.findings],
            "stats": dict(self.stats),
            "secrets": len(self.secrets),
        }

    def discard(self) -> None:
        with _lock:
            self.captured, self.captured_bytes = [], 0

    def scan_files(self, roots: list[Path], suffixes=(".log", ".out", ".err")) -> list[Finding]:
        found = []
        for root in roots:
            if not root.is_dir():
                continue
            for path in root.rglob("*"):
                try:
                    if path.suffix in suffixes and path.is_file() and path.stat().st_size < 50 * 1024 * 1024:
                        found += self.scan_text(f"log file {path}", path.read_text(errors="replace"))
                except FileNotFoundError:  # rotated or removed by a process still running
                    continue
        self.findings += found
        return found


# --- the hooks into the running code (observers: each calls the original and only records) ----------


def _each(method: str, *args) -> None:
    for scanner in list(ACTIVE):
        getattr(scanner, method)(*args)


class _CaptureLogs(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = logging.Formatter("%(name)s %(levelname)s %(message)s").format(record)
        except Exception:  # noqa: BLE001 - a record that can't format is the logging code's problem, not ours
            return
        _each("capture", f"log record ({record.name})", text, "log_records")


def _response_text(request, response) -> str:
    body = response.content.decode("utf-8", errors="replace")
    if request.method == "POST" and request.path.rstrip("/").endswith("/api/v1/tokens") and response.status_code == 201:
        try:
            data = json.loads(body)
        except ValueError:
            return body
        data.pop("token", None)  # shown once, on purpose: the only place a token may appear
        return json.dumps(data)
    return body


def _tee(chunks, where: str):
    for chunk in chunks:
        text = chunk.decode("utf-8", errors="replace") if isinstance(chunk, bytes) else str(chunk)
        _each("capture", where, text, "responses")
        yield chunk


def install() -> None:
    """Wrap the functions that see secrets and outputs. Idempotent."""
    from django.core.handlers.base import BaseHandler
    from django.db.models.signals import post_save

    from accounts.models import ApiToken
    from audit.models import AuditEvent
    from governance import deployment
    from governance.hosts import base as hosts_base
    from governance.models import DeploymentTarget

    if getattr(ApiToken.hash_token, "_secret_scan", False):
        return

    original_hash = ApiToken.hash_token

    @functools.wraps(original_hash)
    def hash_token(token: str) -> str:
        if isinstance(token, str) and TOKEN_FORMAT.match(token):
            _each("add_secret", token, "API token")
        return original_hash(token)

    hash_token._secret_scan = True
    ApiToken.hash_token = staticmethod(hash_token)

    original_resolve = deployment.resolve_credentials

    @functools.wraps(original_resolve)
    def resolve_credentials(ref: str):
        value = original_resolve(ref)
        _each("add_secret", value, f"host credential ({ref})")
        return value

    deployment.resolve_credentials = resolve_credentials

    original_spec_init = hosts_base.ReleaseSpec.__init__

    @functools.wraps(original_spec_init)
    def spec_init(self, *args, **kwargs):
        original_spec_init(self, *args, **kwargs)
        _each("add_secret", getattr(self, "credentials", None), "host credential (release spec)")

    hosts_base.ReleaseSpec.__init__ = spec_init

    def target_saved(sender, instance, **kwargs):
        kind, _, name = (instance.credentials_ref or "").partition(":")
        if kind == "env" and name:
            for scanner in list(ACTIVE):
                scanner.env_refs.add(name)
            _each("read_env_refs")

    post_save.connect(target_saved, sender=DeploymentTarget, weak=False, dispatch_uid="secret-scan-target")

    def audit_saved(sender, instance, created, **kwargs):
        if created:
            text = json.dumps([instance.before, instance.after, instance.reason], default=str)
            _each("capture", f"audit event {instance.action}", text, "audit_events")

    post_save.connect(audit_saved, sender=AuditEvent, weak=False, dispatch_uid="secret-scan-audit")

    original_get_response = BaseHandler.get_response

    @functools.wraps(original_get_response)
    def get_response(self, request):
        response = original_get_response(self, request)
        if request.path.startswith("/api/"):
            where = f"API response {request.method} {request.path} {response.status_code}"
            if getattr(response, "streaming", False):
                response.streaming_content = _tee(response.streaming_content, where)
            else:
                _each("capture", where, _response_text(request, response), "responses")
        return response

    BaseHandler.get_response = get_response

    handler = _CaptureLogs(level=logging.DEBUG)
    logging.getLogger().addHandler(handler)


def empty_result() -> dict:
    return SecretScanner().session_result([])


def failed_result(why: str) -> dict:
    return {**empty_result(), "findings": [f"no verdict possible: {why}"]}


def verdict(results: list[dict], *, expect_traffic: bool) -> tuple[str, str]:
    """The run's summary line and its failure ("" when none) from each process's session_result: every
    distinct leak named (never the secret itself); with `expect_traffic` (the whole suite ran), a scan
    that saw no token, response or log record fails too, as it would pass whatever leaked."""
    findings = list(dict.fromkeys(f for result in results for f in result["findings"]))
    stats = {key: sum(result["stats"][key] for result in results) for key in results[0]["stats"]}
    summary = f"secret scan: {sum(r['secrets'] for r in results)} secret values in {len(results)} process(es); {stats}"
    if findings:
        return summary, f"{len(findings)} leaks of API tokens or host credentials:\n" + "\n".join(findings[:50])
    if expect_traffic and not (stats["tokens"] and stats["responses"] and stats["log_records"]):
        return summary, f"the secret scan saw no tokens, responses or log records, so it checked nothing: {stats}"
    return summary, ""
