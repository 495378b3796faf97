#!/usr/bin/env python3
"""registry-cli: register model versions from CI. Standard library only.

Runs as the `registry-cli` console script once the project is installed, as
`python -m registry.cli`, or as a single copied file (`python3 cli.py ...`, Python 3.8+).

    registry-cli register --model ns/name --path ./model [--metrics metrics.json] [--params params.json]
                          [--card README.md] [--tag k=v ...] [--alias candidate] [--create-model]
                          [--source-commit SHA --source-repo URL --source-branch B --ci-run-url URL]
                          [--run-id UUID]
    registry-cli digest --path ./model [--manifest]
    registry-cli resolve --model ns/name --alias champion

Configuration: --url or REGISTRY_URL (the server's base URL), and the API token in REGISTRY_TOKEN.
The token is only ever read from the environment and is never printed.

Lineage: --run-id (default REGISTRY_RUN_ID) names the OpenLineage run that produced the version, the runId of
the training run's events (8-4-4-4-12 hex digits). It is part of the version: registering the same files again
with another run id (or none) is refused with 409 digest_conflict.

Which files a version holds: every regular file under --path, recursively, named by its path
relative to --path with "/" separators, sorted. Hidden files and empty files are included; empty
directories are not represented. A symbolic link is followed when its target lies inside --path
(the file appears under the link's own name); a link whose target lies outside --path is skipped
with a warning, so a stray link in a CI workspace cannot upload files from elsewhere on the
machine. Dangling links, link loops, sockets, FIFOs and devices are errors.

The digest is the registry's rule (registry/manifest.py): "sha256:" + hex sha256 of the canonical
JSON {"files": [{"path", "size", "sha256"}, ...]} with files sorted by path, keys sorted, ","/":"
separators, UTF-8, no whitespace.

Credentials in URLs: the registry refuses a version whose source repository, CI run URL or artifact URI holds one
(user:password@, any user name before @ in an http(s) URL, a query parameter named like token or sig), as it keeps
them in its audit log and shows them to every reader of the model. A --source-repo, --ci-run-url or --artifact-uri
holding one is a usage error before any request; one the CLI read from the CI's variables is registered without it,
with a warning.
Messages show such URLs with the credential replaced by ***.

TLS: https:// trusts the system's CAs, plus the bundle (file or directory) named by SSL_CERT_FILE or
REQUESTS_CA_BUNDLE, for a registry whose certificate a private CA signed.

Exit status: 0 success; 1 the server refused a request (its error code and message are printed on
stderr); 2 usage error (bad arguments, missing token or URL, unreadable files, a file changed while it was
uploaded, a TLS certificate that is not trusted or an https:// URL for a plain-HTTP port); 3 the server could
not be reached or did not answer (network error, timeout, a 408/429/502/503/504 that outlasted the retries):
run the command again, every request it sends is idempotent.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run as a script, this file's directory comes first on sys.path; in the project it holds modules named like
    # the standard library's (registry/selectors.py) that urllib would import instead. Nothing here needs it.
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != here]

import argparse
import functools
import hashlib
import http.client
import json
import re
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

try:
    import ssl
except ImportError:  # Python built without ssl: http:// only, as urllib itself
    ssl = None

__version__ = "0.1.0"

PROG = "registry-cli"
CHUNK = 1024 * 1024
MAX_FILES = 10_000  # the server's limit (registry/manifest.py)
MAX_PATH = 1024
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NETWORK = 0, 1, 2, 3
# Retried, then exit 3: the request timed out at the server (408), was throttled (429), or a proxy or gateway found
# the registry down, restarting or too slow (502/503/504). None is a refusal of the request itself.
RETRY_STATUSES = (408, 429, 502, 503, 504)
MAX_RETRY_AFTER = 60  # seconds: a longer Retry-After ends the retries at once rather than hold the CI job
MAX_TIMEOUT = 86400  # seconds; the socket layer refuses much larger values
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")  # CA bundles https:// trusts besides the system's
COMMIT_RE = re.compile(r"^[0-9a-f]{7,64}$")
# Rules the server applies with these same names (registry/api/serializers.py imports them), so the CLI refuses
# before any request what the registry would refuse.
MAX_TAG_KEY, MAX_TAG_VALUE = 255, 500
MAX_URL = 1000
_URL_BLANK = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
# The run that produced a version: an OpenLineage runId, in the one form the registry's lineage ingest takes for
# run.runId (lineage/openlineage.py: the spec's `format: uuid`, 8-4-4-4-12 hex digits), so it names the run exactly
# as the run's events do. Not OPENLINEAGE_PARENT_ID (namespace/job/runId): that names the run that started this
# process (an Airflow task), for its child runs to point at, not the run that trained the model.
RUN_ID_VARIABLE = "REGISTRY_RUN_ID"
RUN_ID_RE = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


# --- errors ------------------------------------------------------------------------------------


class CliError(Exception):
    exit_code = EXIT_USAGE


class UsageError(CliError):
    exit_code = EXIT_USAGE


class NetworkError(CliError):
    """The registry could not be reached or did not answer: retried, then exit 3. `note` is the short reason logged
    before a retry; `wait` the seconds the server asked for (Retry-After), if any; `retry` False when retrying now
    is pointless (the server asked for a longer wait than MAX_RETRY_AFTER)."""

    exit_code = EXIT_NETWORK

    def __init__(self, message: str, note: str = "", wait: int | None = None, retry: bool = True):
        super().__init__(message)
        self.note, self.wait, self.retry = note, wait, retry


class ServerError(CliError):
    """The server answered with an error status."""

    exit_code = EXIT_REFUSED
    hint = ""  # what to do, when the CLI knows more than the server's message says

    def __init__(self, method, path, status, code, message, detail=None, request_id=None):
        super().__init__(message)
        self.method, self.path, self.status = method, path, status
        self.code, self.message, self.detail, self.request_id = code, message, detail, request_id

    def __str__(self):
        lines = [f"{self.method} {self.path} refused: HTTP {self.status} {self.code}: {self.message}"]
        if self.detail not in (None, {}, []):
            lines.append("detail: " + json.dumps(self.detail, ensure_ascii=False, sort_keys=True))
        if self.request_id:
            lines.append(f"request id: {self.request_id}")
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)


def warn(message: str) -> None:
    print(f"{PROG}: warning: {mask_url_credentials(message)}", file=sys.stderr)


class Log:
    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"{PROG}: {mask_url_credentials(message)}", file=sys.stderr, flush=True)


# --- files, manifest, digest -------------------------------------------------------------------


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def manifest_digest(files: list) -> str:
    return "sha256:" + hashlib.sha256(canonical_json({"files": files})).hexdigest()


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives on Windows
        return False


def _posix_path(parts: list) -> str:
    for part in parts:
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"file name {os.fsencode(part)!r} is not valid UTF-8; rename it.") from None
        if "\\" in part or "\x00" in part:
            raise UsageError(f"file name {part!r} contains a backslash, which the registry does not accept.")
    path = "/".join(parts)
    if len(path) > MAX_PATH:
        raise UsageError(f"path '{path[:80]}…' is longer than {MAX_PATH} characters.")
    return path


def collect_files(root: str) -> list:
    """[(relative POSIX path, absolute path)] for every file under root, sorted by path. See module doc."""
    if not os.path.exists(root):
        raise UsageError(f"--path {root}: no such file or directory.")
    root_real = os.path.realpath(root)
    if os.path.isfile(root_real):
        return [(_posix_path([os.path.basename(os.path.abspath(root))]), root_real)]
    if not os.path.isdir(root_real):
        raise UsageError(f"--path {root} is neither a regular file nor a directory.")
    found = []

    def visit(directory: str, parts: list, ancestors: frozenset) -> None:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise UsageError(f"cannot list {directory}: {exc.strerror}.") from None
        for entry in entries:
            rel = parts + [entry.name]
            shown = "/".join(rel)
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not _inside(target, root_real):
                    warn(f"skipping {shown}: symbolic link to {target}, outside {root}.")
                    continue
                if not os.path.exists(target):
                    raise UsageError(f"{shown} is a dangling symbolic link (to {target}).")
                if os.path.isdir(target):
                    if target in ancestors:
                        raise UsageError(f"{shown} is a symbolic link loop (back to {target}).")
                    visit(entry.path, rel, ancestors | {target})
                    continue
                mode = os.stat(target).st_mode
            else:
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    visit(entry.path, rel, ancestors | {os.path.realpath(entry.path)})
                    continue
            if not stat.S_ISREG(mode):
                raise UsageError(f"{shown} is not a regular file (socket, FIFO or device); remove it from --path.")
            found.append((_posix_path(rel), entry.path))

    try:
        visit(root_real, [], frozenset({root_real}))
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename or root}: {exc.strerror}.") from None
    found.sort(key=lambda item: item[0])
    return found


def hash_file(path: str) -> tuple:
    """(size, sha256 hex) of a file, read in chunks."""
    hasher, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                hasher.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}.") from None
    return size, hasher.hexdigest()


def build_manifest(root: str, log=None) -> tuple:
    """({"files": [...]}, {relative path: absolute path}) for the files under root."""
    files = collect_files(root)
    if not files:
        raise UsageError(f"--path {root} holds no files to register.")
    if len(files) > MAX_FILES:
        raise UsageError(f"--path {root} holds {len(files)} files; the registry accepts at most {MAX_FILES}.")
    entries, where = [], {}
    for rel, path in files:
        size, sha = hash_file(path)
        entries.append({"path": rel, "size": size, "sha256": sha})
        where[rel] = path
    if log:
        log(f"hashed {len(entries)} file(s), {_human(sum(e['size'] for e in entries))}")
    return {"files": entries}, where


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


# --- HTTP --------------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow redirects: a POST would turn into a GET, and the token must not travel elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


# A server may answer a request before reading its body (a 413 on the declared size of an upload) and hang up: the
# rest of the body then fails to send. urllib raises that send error and drops the answer already received, which
# made a refusal look like a network error, retried by sending the whole file again.
_CUT_OFF = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class _EarlyAnswer:
    """Mixin for http.client connections: when the server cuts the request off, read the answer it sent anyway.
    Only an error answer counts (it can be about the request's head alone); without one, the send error stands."""

    _cut_off = None

    def request(self, *args, **kwargs):
        try:
            super().request(*args, **kwargs)
        except _CUT_OFF as exc:
            self._cut_off = exc

    def getresponse(self):
        if self._cut_off is None:
            return super().getresponse()
        try:
            answer = super().getresponse()
        except (OSError, http.client.HTTPException):  # nothing came before the hang-up (Linux keeps what did)
            raise self._cut_off from None
        if answer.status < 400:  # a success cannot be about a body the server did not get
            answer.close()
            raise self._cut_off
        return answer


@functools.lru_cache(maxsize=None)  # noqa: UP033 (functools.cache is Python 3.9+; this file runs on 3.8)
def _with_early_answer(connection_class: type) -> type:
    return type(connection_class.__name__, (_EarlyAnswer, connection_class), {})


class _EarlyAnswerHandler:
    """Mixin for urllib's HTTP(S) handlers. It swaps the connection class in do_open, whose callers pass arguments
    that differ between Python versions (https_open's check_hostname)."""

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_with_early_answer(http_class), req, **kwargs)


class _HTTPHandler(_EarlyAnswerHandler, urllib.request.HTTPHandler):
    pass


_HTTPSHandler = None
if hasattr(urllib.request, "HTTPSHandler"):  # Python built without ssl: http:// only, as urllib itself

    class _HTTPSHandler(_EarlyAnswerHandler, urllib.request.HTTPSHandler):
        pass


def tls_context():
    """The context for https://: the system's trusted CAs plus the bundles that CA_VARIABLES name (a PEM file or a
    directory). CI runners behind a private CA commonly set REQUESTS_CA_BUNDLE, which only `requests` reads; OpenSSL
    reads SSL_CERT_FILE itself but silently skips a file it cannot load, so both are loaded here, and a bad one is a
    usage error naming it."""
    if ssl is None:
        raise UsageError("this Python has no ssl module, so it cannot reach an https:// registry.")
    context = ssl.create_default_context()
    for name in CA_VARIABLES:
        where = os.environ.get(name, "").strip()
        if not where:
            continue
        try:
            if os.path.isdir(where):
                context.load_verify_locations(capath=where)
            else:
                context.load_verify_locations(cafile=where)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a file holding no PEM certificate
            raise UsageError(
                f"{name}={where}: cannot load CA certificates from it ({getattr(exc, 'strerror', None) or exc}); "
                "point it at a PEM bundle, or unset it."
            ) from None
    return context


class Client:
    def __init__(
        self, base_url: str, token: str, *, timeout: float = 300.0, retries: int = 2, log=None, tls_context=None
    ):
        self.base = base_url
        self._token = token
        self.timeout = timeout
        self.retries = retries
        self.log = log or (lambda message: None)
        handlers = [_NoRedirect(), _HTTPHandler()]
        if _HTTPSHandler is not None:
            handlers.append(_HTTPSHandler(context=tls_context))
        self._opener = urllib.request.build_opener(*handlers)

    def url(self, *segments: str, trailing_slash: bool = False) -> str:
        path = "/".join(urllib.parse.quote(s, safe=":") for s in segments)
        return f"{self.base}/api/v1/{path}" + ("/" if trailing_slash else "")

    def request(self, method: str, url: str, *, json_body=None, body=None, content_type=None, length=None, retry=True):
        """Send a request; return (status, parsed JSON body or None). `body` may be a callable returning an iterable
        of bytes (called again on each retry, for streamed uploads; closed after each attempt if it has close()).
        `retry=False` for requests that are not idempotent."""
        short = urllib.parse.urlsplit(url).path
        attempt, retries = 0, self.retries if retry else 0
        while True:
            attempt += 1
            data = body() if callable(body) else body  # a file body opens its file here, before any network
            if json_body is not None:
                data, content_type = canonical_json(json_body), "application/json"
            try:
                return self._exchange(self._prepare(method, url, data, content_type, length), short)
            except NetworkError as exc:
                if attempt > retries or not exc.retry:
                    raise
                self._pause(attempt, exc.note, exc.wait)
            finally:
                if hasattr(data, "close"):
                    data.close()

    def _prepare(self, method: str, url: str, data, content_type, length) -> urllib.request.Request:
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (base_url allows http(s) only)
        req.add_header("Accept", "application/json")
        req.add_header("User-Agent", f"{PROG}/{__version__} python/{sys.version.split()[0]}")
        req.add_unredirected_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            req.add_header("Content-Type", content_type or "application/octet-stream")
            req.add_header("Content-Length", str(length if length is not None else len(data)))
        return req

    def _exchange(self, req: urllib.request.Request, short: str) -> tuple:
        """One attempt: (status, parsed JSON body) for a success; ServerError for a refusal, NetworkError (retried)
        for no answer or a status in RETRY_STATUSES, UsageError for a TLS failure that only a change of
        configuration cures."""
        method = req.get_method()
        try:
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    return resp.status, _parse_json(resp.read())
            except urllib.error.HTTPError as exc:
                refused, raw = exc, exc.read()  # reading the error body can fail like any other read
        except http.client.InvalidURL as exc:
            raise UsageError(f"registry URL {self.base}: {exc}.") from None
        except (OSError, http.client.HTTPException) as exc:
            problem = _tls_problem(exc)
            if problem is not None:
                raise self._tls_failed(method, short, problem) from None
            raise self._unreachable(method, short, exc) from None
        error = _server_error(method, short, refused, raw)
        if refused.code in RETRY_STATUSES:
            raise self._not_now(error, _retry_after(refused.headers))
        raise error

    def _unreachable(self, method: str, short: str, exc: Exception) -> NetworkError:
        # OSError: URLError, connection errors, timeouts (RemoteDisconnected is one too). HTTPException: an answer
        # cut short (IncompleteRead) or garbled (BadStatusLine, LineTooLong).
        if isinstance(exc, OSError):
            failed, reason = "could not reach", getattr(exc, "reason", exc)
        else:
            text = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
            failed, reason = "got no complete answer from", f"cut short or malformed ({text})"
        return NetworkError(
            f"{failed} the registry at {self.base} ({method} {short}): {reason}. "
            "Check REGISTRY_URL / --url and the network; the command is safe to re-run.",
            note=f"{method} {short}: {reason}",
        )

    def _tls_failed(self, method: str, short: str, problem: Exception) -> UsageError:
        if not isinstance(problem, ssl.SSLCertVerificationError):
            hint = (
                "An https:// URL for a port that speaks plain HTTP fails like this (WRONG_VERSION_NUMBER): use http://"
            )
        elif problem.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            hint = "Use the host name that the registry's certificate names in REGISTRY_URL / --url"
        else:
            hint = "If a private CA signed the registry's certificate, set SSL_CERT_FILE (or REQUESTS_CA_BUNDLE) to "
            hint += "your CA bundle, a PEM file"
            trusted = [f"${name}" for name in CA_VARIABLES if os.environ.get(name, "").strip()]
            if trusted:
                hint += f" (trusted now: the system's CAs and {' and '.join(trusted)})"
        return UsageError(
            f"TLS with the registry at {self.base} failed ({method} {short}): {problem}. {hint}. "
            "Not retried: it fails the same way until the configuration changes."
        )

    def _not_now(self, error: ServerError, wait: int | None) -> NetworkError:
        # None of RETRY_STATUSES refuses the request itself: the registry, or a proxy or gateway in front of it, could
        # not take it now. Once the retries are spent it is a network error (exit 3: run the command again).
        if error.status == 429:
            what = "is limiting requests"
        elif error.status == 408:
            what = "timed out waiting for the request"
        else:
            what = "did not answer in time"
        request_id = f" (request id {error.request_id})" if error.request_id else ""
        retry = wait is None or wait <= MAX_RETRY_AFTER
        then = (
            "The command is safe to re-run."
            if retry
            else f"It asks to wait {wait}s, longer than registry-cli waits ({MAX_RETRY_AFTER}s): run it again later."
        )
        return NetworkError(
            f"the registry at {self.base} {what} ({error.method} {error.path}): "
            f"HTTP {error.status} {error.code}: {error.message.rstrip('.')}{request_id}. {then}",
            note=f"{error.method} {error.path}: HTTP {error.status}",
            wait=wait,
            retry=retry,
        )

    def _pause(self, attempt: int, why: str, wait: int | None = None) -> None:
        delay = wait if wait is not None else min(2 ** (attempt - 1), 30)  # wait <= MAX_RETRY_AFTER here
        self.log(f"{why}; retrying in {delay}s")
        time.sleep(delay)


def _tls_problem(exc: Exception):
    """The ssl error behind `exc` when retrying cannot cure it (a certificate not trusted, no TLS on that port), else
    None. urllib wraps what fails while connecting in URLError. A TLS connection cut off (SSLEOFError and the other
    subclasses: a server hanging up on an upload) stays a network error."""
    reason = getattr(exc, "reason", None)
    if ssl is None or not isinstance(reason, ssl.SSLError):
        return None
    if isinstance(reason, ssl.SSLCertVerificationError) or type(reason) is ssl.SSLError:
        return reason
    return None


def _retry_after(headers) -> int | None:
    """The seconds a Retry-After header asks for; None when absent or an HTTP date (the usual back-off applies)."""
    value = (headers.get("Retry-After") or "").strip() if headers is not None else ""
    return int(value) if re.fullmatch(r"[0-9]{1,9}", value) else None


def _parse_json(raw: bytes):
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _server_error(method: str, path: str, exc: urllib.error.HTTPError, raw: bytes) -> ServerError:
    body = _parse_json(raw)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "message" in error:
        return ServerError(
            method,
            path,
            exc.code,
            error.get("code") or "error",
            error["message"],
            error.get("detail"),
            error.get("request_id"),
        )
    if 300 <= exc.code < 400:
        location = exc.headers.get("Location", "?")
        return ServerError(
            method,
            path,
            exc.code,
            "redirect",
            f"the server redirects to {location}; point REGISTRY_URL / --url at the final address "
            "(redirects are not followed so the token never leaves for another address).",
        )
    text = raw.decode("utf-8", "replace").strip().replace("\n", " ")
    message = f"{exc.reason or 'error'}" + (f": {text[:300]}" if text else "")
    return ServerError(method, path, exc.code, "http_error", message)


def _file_body(path: str, size: int):
    """A callable giving the upload body of the file at `path` (hashed as `size` bytes), for Client.request."""
    return lambda: _FileBody(path, size)


class _FileBody:
    """A file's bytes, as declared when it was hashed. The file is opened before the request is sent, so one deleted
    or unreadable since hashing is a usage error (exit 2), not a network error; one that has since grown or shrunk
    is a usage error too (the request declared `size` bytes; sending fewer left the server waiting until the
    timeout)."""

    def __init__(self, path: str, size: int):
        self.path, self.size = path, size
        try:
            self._file = open(path, "rb")  # noqa: SIM115 (Client.request closes it after the attempt)
        except OSError as exc:
            raise self._unreadable(exc) from None

    def __iter__(self):
        sent = 0
        while sent < self.size:
            chunk = self._read(min(CHUNK, self.size - sent))
            if not chunk:
                break
            sent += len(chunk)
            yield chunk
        if sent < self.size or self._read(1):
            now = os.fstat(self._file.fileno()).st_size
            raise UsageError(
                f"{self.path} changed while it was being registered ({self.size} bytes when hashed, {now} now); "
                "run again."
            )

    def _read(self, n: int) -> bytes:
        try:
            return self._file.read(n)
        except OSError as exc:  # raised inside urllib's send, it would pass for a network error
            raise self._unreadable(exc) from None

    def _unreadable(self, exc: OSError) -> UsageError:
        return UsageError(f"cannot read {self.path} after it was hashed: {exc.strerror}; run again.")

    def close(self) -> None:
        self._file.close()


# --- configuration -----------------------------------------------------------------------------


def base_url(args) -> str:
    url = (args.url or os.environ.get("REGISTRY_URL") or "").strip()
    if not url:
        raise UsageError("no registry URL: pass --url or set REGISTRY_URL (e.g. https://registry.example.com).")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket, http://[::1
        raise UsageError(f"registry URL '{url}' is not a valid URL ({exc}).") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"registry URL '{url}' must start with http:// or https:// and name a host.")
    if parts.username or parts.password:
        raise UsageError("do not put credentials in the registry URL; set REGISTRY_TOKEN instead.")
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError:
        raise UsageError(f"registry URL '{url}' has an invalid port.") from None
    path = parts.path.rstrip("/")
    if path.endswith("/api/v1"):
        path = path[: -len("/api/v1")]
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        warn(f"{parts.netloc} is plain http: the API token travels unencrypted.")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def client_from(args) -> Client:
    url = base_url(args)
    token = os.environ.get("REGISTRY_TOKEN", "").strip()
    if not token:
        raise UsageError("REGISTRY_TOKEN is not set: export the API token (in CI, from a secret).")
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        # http.client would refuse the header with a traceback that shows the token
        raise UsageError("REGISTRY_TOKEN holds spaces, line breaks or non-ASCII characters; no API token does.")
    context = tls_context() if url.startswith("https:") else None
    return Client(url, token, timeout=args.timeout, retries=args.retries, log=Log(args.quiet), tls_context=context)


def parse_model(text: str) -> tuple:
    namespace, sep, name = _utf8(text or "", "--model").partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise UsageError(f"--model '{text}' must be namespace/name, e.g. acme/churn.")
    return namespace, name


def load_json_object(path: str, option: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f, parse_constant=_reject_constant)
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror}.") from None
    except ValueError as exc:
        raise UsageError(f"{option} {path} is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise UsageError(f"{option} {path} must hold a JSON object.")
    try:  # encode it as the request will, so what JSON cannot carry fails here, before any work
        canonical_json(value)
    except UnicodeEncodeError:
        raise UsageError(f"{option} {path} holds a string that is not valid Unicode (a lone surrogate).") from None
    except ValueError:  # allow_nan=False: a number too large for a float, e.g. 1e400, loads as inf
        raise UsageError(f"{option} {path} holds a number out of range (e.g. 1e400).") from None
    return value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _utf8(text: str, what: str) -> str:
    """text, if it can be sent: a command line or environment that is not UTF-8 gives lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            shown = text.encode("utf-8", "surrogateescape")  # the bytes as given
        except UnicodeEncodeError:
            shown = text.encode("utf-8", "backslashreplace")
        raise UsageError(f"{what} {shown[:200]!r} is not valid UTF-8.") from None
    return text


def tag_key_problem(key: str) -> str | None:
    """Why `key` cannot be a tag's key, or None."""
    if not key:
        return f"a tag key must be 1 to {MAX_TAG_KEY} characters long, not empty"
    if len(key) > MAX_TAG_KEY:
        return f"a tag key must be 1 to {MAX_TAG_KEY} characters long; '{key[:40]}…' has {len(key)}"
    return None


def http_url_problem(url: str) -> str | None:
    """Why `url` is not an absolute http(s) URL naming a host, or None. Any host name a CI system uses passes: a
    single label (http://jenkins:8080/...) or one with "_", which validators made for the public web refuse."""
    if len(url) > MAX_URL:
        return f"is longer than {MAX_URL} characters"
    if _URL_BLANK.search(url):
        return "holds a space or a control character (percent-encode it)"
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # ValueError for a port that is not a number from 0 to 65535
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http:// or https:// URL naming a host, e.g. http://jenkins:8080/job/train/42/"
    return None


# Credentials inside URLs. The server refuses them in a version's source.repository and source.ci_run_url with
# core/url_credentials.py `problem`; this file imports nothing from the project, so that rule is repeated here, and
# tests/registry/test_cli_local_checks.py runs both over the same table of URLs so they cannot drift.
URL_MASK = "***"
# A name that is, or ends in (after `_` or `-`), a word for a secret: token, hf_token, private-token, api_key,
# aws_secret_access_key, client_secret, X-Amz-Signature, password... (`sort_key` too: masking more is harmless).
_CREDENTIAL_PARAM = re.compile(
    r"(?:[a-z0-9]+[_-])*(?:access[_-]?)?(?:token|secret|key|passw(?:or)?d|pwd|signature|sig|credentials?)"
    r"|apikey|accesstoken|privatetoken|clientsecret|auth|jwt",
    re.IGNORECASE,
)
# In running text: scheme://userinfo@ (userinfo up to the last @ of the authority, as urllib reads it) and query
# parameters.
_TEXT_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/?#\s]*)@")
_TEXT_PARAM = re.compile(r"([?&;])([^=&;#\s\"'?]+)=([^&;#\s\"']*)")


def _secret_name(name: str) -> bool:
    return _CREDENTIAL_PARAM.fullmatch(urllib.parse.unquote_plus(name)) is not None  # %74oken is token


def _userinfo_is_credential(scheme: str, userinfo: str) -> bool:
    """A password, or any user part of an http(s) URL (git+https:// too: pip's and VCS tools' form)."""
    return ":" in userinfo or scheme.lower().rpartition("+")[2] in ("http", "https")


def url_credential_problem(url: str) -> str | None:
    """Why `url` carries a credential, or None: a password (any scheme), any user part of an http(s) URL (GitHub and
    GitLab take a token as the user name), or a query parameter named like a secret. ssh://git@host/... and
    git@host:org/repo name a user, not a credential. The server's rule (core/url_credentials.py `problem`)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # not a URL urllib reads: what the masking hides below still counts
        parts = None
    if parts is not None:
        userinfo, at, _ = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            return "holds a password (user:password@)"
        if at and _userinfo_is_credential(parts.scheme, userinfo):
            return "holds a user name before @, where GitHub and GitLab take a token"
        for piece in re.split("[&;]", parts.query):
            name = piece.partition("=")[0]
            if name and _secret_name(name):
                return f"holds the query parameter {urllib.parse.unquote_plus(name)!r}, which looks like a credential"
    if mask_url_credentials(url) != url:  # a secret-named parameter where urllib reads no query (`;token=`, `#…`)
        return "holds a credential"
    return None


def _rewrite_credentials(url: str, replace: bool) -> str:
    """`url` with what url_credential_problem finds replaced by *** (`replace`) or removed; `url` itself when it
    holds none. Raises ValueError for what urlsplit cannot read."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")  # urllib's own reading: the user part ends at the last @
    netloc = parts.netloc
    if at and _userinfo_is_credential(parts.scheme, userinfo):
        netloc = f"{URL_MASK}@{host}" if replace else host  # all of it: a token may be the user name before :password
    pieces = []
    for piece in re.split("([&;])", parts.query) if parts.query else []:
        name, eq, _ = piece.partition("=")
        if piece in ("&", ";") or not _secret_name(name):
            pieces.append(piece)
        elif replace:
            pieces.append(f"{name}={URL_MASK}" if eq else piece)
    query = re.sub("[&;]+", lambda m: m.group()[0], "".join(pieces)).strip("&;")  # separators left by removals
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_url(url: str) -> str:
    """`url` as a message may show it: its credentials replaced by ***."""
    try:
        return _rewrite_credentials(url, replace=True)
    except ValueError:
        return mask_url_credentials(url)


def url_without_credentials(url: str) -> str:
    """`url` with its user part (when url_credential_problem calls it a credential) and its secret-named query
    parameters removed. Raises ValueError for what urlsplit cannot read."""
    return _rewrite_credentials(url, replace=False)


def mask_url_credentials(text: str) -> str:
    """`text` with the credentials of the URLs in it replaced by ***: every message the CLI prints goes through it.
    The server's masking (core/url_credentials.py `mask`)."""
    if "://" not in text and "=" not in text:
        return text

    def userinfo(match: re.Match) -> str:
        scheme = match.group(1)[:-3]
        return f"{match.group(1)}{URL_MASK}@" if _userinfo_is_credential(scheme, match.group(2)) else match.group(0)

    def param(match: re.Match) -> str:
        return f"{match.group(1)}{match.group(2)}={URL_MASK}" if _secret_name(match.group(2)) else match.group(0)

    return _TEXT_PARAM.sub(param, _TEXT_USERINFO.sub(userinfo, text))


def registry_uri_problem(uri: str, namespace: str, name: str, digest: str) -> str | None:
    """Why `uri` cannot be sent as a version's registry:// artifact_uri, or None: the registry stores
    registry://<ns>/<name>@<digest> of the model and digest registered, and takes only that, or registry:// bare."""
    canonical = f"registry://{namespace}/{name}@{digest}"
    if uri in ("registry://", canonical):
        return None
    return f'names another model, digest or revision than this version\'s own, {canonical}: send "registry://"'


def parse_tags(items: list) -> dict:
    tags = {}
    for item in items or []:
        key, sep, value = _utf8(item, "--tag").partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--tag '{item}' must be key=value.")
        problem = tag_key_problem(key.strip())
        if problem:
            raise UsageError(f"--tag: {problem}.")
        if len(value) > MAX_TAG_VALUE:
            raise UsageError(f"--tag {key.strip()[:40]}: the value must be at most {MAX_TAG_VALUE} characters long.")
        tags[key.strip()] = value
    return tags


_WHY_NO_CREDENTIALS = (
    "The registry refuses credentials in a version's source and artifact URI, which its audit log keeps and every "
    "reader of the model sees."
)


def credential_passed(option: str, value: str, problem: str) -> UsageError:
    """The usage error for an option whose URL holds a credential, showing the URL masked."""
    return UsageError(f"{option} '{redact_url(value)[:200]}' {problem}: remove it. {_WHY_NO_CREDENTIALS}")


def run_id_from(args, environ=None) -> str | None:
    """The OpenLineage run UUID to send as the version's run_id: --run-id, else $REGISTRY_RUN_ID, else None. Given
    and malformed (an empty --run-id too: a CI variable that came out empty) is a usage error."""
    env = os.environ if environ is None else environ
    if args.run_id is not None:
        where, text = "--run-id", args.run_id
    else:
        where, text = f"${RUN_ID_VARIABLE}", env.get(RUN_ID_VARIABLE) or ""
        if not text.strip():
            return None
    text = _utf8(text, where).strip()
    if RUN_ID_RE.fullmatch(text):
        return text.lower()
    shown = f"{where} '{text[:100]}'"
    if text.count("/") >= 2:
        raise UsageError(
            f"{shown} looks like OPENLINEAGE_PARENT_ID's namespace/job/runId: pass the runId alone (after the last "
            "'/') if that run is the one that trained the model."
        )
    raise UsageError(
        f"{shown} is not an OpenLineage run id; pass the run's UUID (8-4-4-4-12 hex digits), as its OpenLineage "
        "events send it in run.runId."
    )


def _run_id_conflict_hint(exc: ServerError, model: str, run_id: str | None) -> str:
    """What to do when the version these files make exists with another run_id (or none) than the one sent."""
    fields = exc.detail.get("fields") if isinstance(exc.detail, dict) else None
    if exc.code != "digest_conflict" or not isinstance(fields, list) or "run_id" not in fields:
        return ""
    number = exc.detail.get("number", "N")
    hint = f"hint: version {number} of {model} "
    if not run_id:
        return hint + (
            f"was registered with a run id (the run that produced it), and this command gives none: pass the same "
            f"--run-id (GET the version: its run_id) or set ${RUN_ID_VARIABLE}."
        )
    return hint + (
        f"was registered with another run id, or without one, not {run_id}; the run that produced a version is part "
        "of it. Pass the run id it was registered with (GET the version: its run_id) or, to name the producing run of "
        f'a version registered without one, link it: POST /api/v1/lineage/links {{"nodeId": "model:{model}:{number}", '
        f'"runId": "{run_id}", "linked": true}}.'
    )


def source_from(args, environ=None) -> dict:
    """Source fields: explicit options first, then GitHub Actions or GitLab CI variables."""
    env = os.environ if environ is None else environ

    def get(name):
        return (env.get(name) or "").strip()

    repository = commit = branch = run_url = ""
    read_from = {}  # the variables a URL was read from, for messages
    if get("GITHUB_ACTIONS") == "true" or get("GITHUB_SHA"):
        server = get("GITHUB_SERVER_URL").rstrip("/") or "https://github.com"
        repo = get("GITHUB_REPOSITORY")
        repository = f"{server}/{repo}" if repo else ""
        commit = get("GITHUB_SHA")
        branch = get("GITHUB_HEAD_REF") or get("GITHUB_REF_NAME")  # a pull request's head branch, else the ref
        if repo and get("GITHUB_RUN_ID"):
            run_url = f"{server}/{repo}/actions/runs/{get('GITHUB_RUN_ID')}"
        read_from = {
            "repository": "$GITHUB_SERVER_URL/$GITHUB_REPOSITORY",
            "ci_run_url": "$GITHUB_SERVER_URL/$GITHUB_REPOSITORY/actions/runs/$GITHUB_RUN_ID",
        }
    elif get("GITLAB_CI") == "true" or get("CI_COMMIT_SHA"):
        repository = get("CI_PROJECT_URL")
        commit = get("CI_COMMIT_SHA")
        branch = get("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME") or get("CI_COMMIT_REF_NAME")
        run_url = get("CI_PIPELINE_URL")
        read_from = {"repository": "$CI_PROJECT_URL", "ci_run_url": "$CI_PIPELINE_URL"}
    source = {
        "repository": args.source_repo if args.source_repo is not None else repository,
        "commit": (args.source_commit if args.source_commit is not None else commit).strip().lower(),
        "branch": args.source_branch if args.source_branch is not None else branch,
        "ci_run_url": args.ci_run_url if args.ci_run_url is not None else run_url,
    }
    # Before anything that echoes a value. A credential the user passed is refused; one in a URL the CLI read from
    # the CI's variables is removed, with a warning: the CLI chose that URL, and the job should not fail over it.
    for field, option, given in (
        ("repository", "--source-repo", args.source_repo),
        ("ci_run_url", "--ci-run-url", args.ci_run_url),
    ):
        value = source[field]
        problem = value and url_credential_problem(value)
        if not problem:
            continue
        shown = redact_url(value)[:200]
        if given is not None:
            raise credential_passed(option, value, problem)
        try:
            stripped = url_without_credentials(value)
        except ValueError:  # a URL urllib cannot read: nothing to strip it from, so it is refused as it is
            stripped = value
        if url_credential_problem(stripped):
            raise UsageError(f"{read_from[field]} '{shown}' {problem}: pass {option}. {_WHY_NO_CREDENTIALS}")
        warn(f"{read_from[field]} '{shown}' {problem}: sending '{stripped[:200]}' instead. {_WHY_NO_CREDENTIALS}")
        source[field] = stripped
    source = {k: _utf8(v, f"source {k}") for k, v in source.items() if v}
    if "commit" in source and not COMMIT_RE.match(source["commit"]):
        raise UsageError(f"source commit '{source['commit']}' must be 7-64 hexadecimal characters.")
    problem = "ci_run_url" in source and http_url_problem(source["ci_run_url"])
    if problem:
        raise UsageError(f"CI run URL '{redact_url(source['ci_run_url'])[:200]}' {problem}.")
    return source


# --- commands ----------------------------------------------------------------------------------


def cmd_digest(args) -> int:
    manifest, _ = build_manifest(args.path)
    if args.manifest:
        print(json.dumps({"digest": manifest_digest(manifest["files"]), **manifest}, ensure_ascii=False))
    else:
        print(manifest_digest(manifest["files"]))
    return EXIT_OK


def _api_object(status: int, body, method: str, url: str, key: str) -> dict:
    """`body`, a success's answer, when it is the JSON object holding `key` that the API sends. Anything else (a
    login page or another site at a wrong URL, which answer 200 too) is a bad answer (exit 1), not a traceback."""
    if isinstance(body, dict) and key in body:
        return body
    raise ServerError(
        method,
        urllib.parse.urlsplit(url).path,
        status,
        "bad_response",
        f"the registry's answer is not the API's JSON (an object with '{key}'); "
        "check that REGISTRY_URL / --url is the registry's address.",
    )


def cmd_resolve(args) -> int:
    namespace, name = parse_model(args.model)
    _utf8(args.alias, "--alias")
    client = client_from(args)
    for _ in range(3):  # the alias may move between the two reads; resolve again if it did
        alias_url = client.url("models", namespace, name, "aliases", args.alias)
        alias = _api_object(*client.request("GET", alias_url), "GET", alias_url, "version")
        version_url = client.url("models", namespace, name, "versions", str(alias["version"]))
        version = _api_object(*client.request("GET", version_url), "GET", version_url, "digest")
        if version.get("digest") == alias.get("digest"):
            break
    print(json.dumps(version, ensure_ascii=False))
    return EXIT_OK


def cmd_register(args) -> int:
    log = Log(args.quiet)
    namespace, name = parse_model(args.model)
    # Everything local is checked before the first request.
    metrics = load_json_object(args.metrics, "--metrics") if args.metrics else None
    params = load_json_object(args.params, "--params") if args.params else None
    tags = parse_tags(args.tag)
    source = source_from(args)
    run_id = run_id_from(args)
    if args.alias:
        _utf8(args.alias, "--alias")
    card = None
    if args.card:
        try:
            with open(args.card, "rb") as f:
                card = f.read()
        except OSError as exc:
            raise UsageError(f"--card {args.card}: {exc.strerror}.") from None
    artifact_uri = args.artifact_uri or "registry://"
    problem = url_credential_problem(artifact_uri)
    if problem:
        raise credential_passed("--artifact-uri", artifact_uri, problem)
    client = client_from(args)
    manifest, where = build_manifest(args.path, log)
    digest = manifest_digest(manifest["files"])
    log(f"{args.model}: digest {digest}")
    problem = artifact_uri.startswith("registry://") and registry_uri_problem(artifact_uri, namespace, name, digest)
    if problem:
        raise UsageError(f"--artifact-uri '{artifact_uri[:200]}' {problem} (the default).")

    if args.create_model:
        model_body = {"namespace": namespace, "name": name}
        try:
            client.request("POST", client.url("models", trailing_slash=True), json_body=model_body)
            log(f"created model {args.model}")
        except ServerError as exc:
            if exc.status != 409 or exc.code == "name_taken":  # taken by a model this token may not view: stop here
                raise
            log(f"model {args.model} already exists")

    body = {"artifact_uri": artifact_uri, "manifest": manifest}
    for key, value in (("metrics", metrics), ("params", params), ("source", source), ("tags", tags)):
        if value:
            body[key] = value
    if run_id:
        body["run_id"] = run_id
    versions_url = client.url("models", namespace, name, "versions", trailing_slash=True)
    versions_path = urllib.parse.urlsplit(versions_url).path
    # Register first: if the registry already holds every file (a re-run), nothing is uploaded.
    try:
        try:
            status, version = client.request("POST", versions_url, json_body=body)
        except ServerError as exc:
            if exc.code != "artifacts_missing" or not artifact_uri.startswith("registry://"):
                raise
            upload(client, namespace, name, manifest, where, exc.detail, args.jobs, log)
            status, version = client.request("POST", versions_url, json_body=body)
    except ServerError as exc:
        exc.hint = _run_id_conflict_hint(exc, f"{namespace}/{name}", run_id)
        raise
    version = _api_object(status, version, "POST", versions_url, "number")
    number, created = version["number"], status == 201
    if version.get("digest") != digest:
        raise ServerError(
            "POST",
            versions_path,
            status,
            "digest_differs",
            f"the registry computed {version.get('digest')} for the manifest, but this client computed {digest}.",
        )
    log(f"{'registered' if created else 'already registered:'} {args.model} version {number}")
    step = None
    try:
        if card is not None:
            step = "posting the model card"
            client.request(
                "POST",
                client.url("models", namespace, name, "versions", str(number), "card"),
                body=card,
                content_type="text/markdown; charset=utf-8",
                # Retried like the rest: posting the card the latest revision already holds answers 200 with that
                # revision (registry.services.card_revision_add), so a retry after a lost answer adds nothing.
            )
            log(f"posted model card {args.card}")
        if args.alias:
            step = f"setting alias {args.alias}"
            client.request(
                "PUT", client.url("models", namespace, name, "aliases", args.alias), json_body={"version": number}
            )
            log(f"alias {args.alias} -> version {number}")
    except CliError as exc:
        print(f"{PROG}: version {number} ({digest}) is registered, but {step} failed:", file=sys.stderr)
        raise exc from None
    summary = {"model": f"{namespace}/{name}", "number": number, "digest": digest, "created": created}
    print(json.dumps(summary))
    return EXIT_OK


def upload(client: Client, namespace: str, name: str, manifest: dict, where: dict, detail, jobs: int, log) -> None:
    """Upload the files the registry reported missing (each distinct content once), streamed from disk."""
    missing = detail.get("missing") if isinstance(detail, dict) else None
    wanted = set(missing) if isinstance(missing, list) else {f["path"] for f in manifest["files"]}
    todo = {}
    for entry in manifest["files"]:
        if entry["path"] in wanted and entry["sha256"] not in todo:
            todo[entry["sha256"]] = entry
    total = sum(e["size"] for e in todo.values())
    log(f"uploading {len(todo)} file(s), {_human(total)}")

    def put(entry):
        url = client.url("models", namespace, name, "artifacts", "sha256:" + entry["sha256"])
        path = where[entry["path"]]
        try:
            client.request("PUT", url, body=_file_body(path, entry["size"]), length=entry["size"])
        except ServerError as exc:
            # The bytes sent are not the ones hashed: the file changed (keeping its size; a size change is caught
            # while sending). A local problem, like a file deleted since hashing: nothing was stored.
            if exc.code != "digest_mismatch":
                raise
            raise UsageError(
                f"{path} changed while it was being uploaded (same size, other content); run again."
            ) from None
        log(f"uploaded {entry['path']} ({_human(entry['size'])})")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(put, entry) for entry in todo.values()]
        errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]


# --- argument parsing --------------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not 0 < value <= MAX_TIMEOUT:  # nan compares false too
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_TIMEOUT} seconds, not '{text}'")
    return value


def _count(least: int):
    """An argparse type: a whole number of at least `least`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least} or more, not '{text}'")
        return value

    return parse


def _add_common(parser: argparse.ArgumentParser, top: bool) -> None:
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--url", default=default(None), help="registry base URL (default: $REGISTRY_URL)")
    parser.add_argument(
        "--timeout", type=_seconds, default=default(300.0), help="seconds to wait on the network (default 300)"
    )
    parser.add_argument(
        "--retries",
        type=_count(0),
        default=default(2),
        help="retries after a network error or HTTP 408/429/502/503/504 (default 2), 1s then 2s apart, or as long "
        f"as the answer's Retry-After says up to {MAX_RETRY_AFTER}s (a longer one ends the retries)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False), help="no progress on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Register model versions in the model governance registry from CI. "
        "The API token is read from REGISTRY_TOKEN.",
        epilog="Exit status: 0 ok, 1 the server refused, 2 usage error (or TLS configuration), "
        "3 network error (run the command again). https:// trusts the system's CAs and $SSL_CERT_FILE / "
        "$REQUESTS_CA_BUNDLE.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    reg = sub.add_parser("register", help="hash, upload and register a directory as a model version")
    _add_common(reg, top=False)
    reg.add_argument("--model", required=True, help="namespace/name")
    reg.add_argument("--path", required=True, help="directory (or single file) holding the model's files")
    reg.add_argument("--metrics", help='JSON file: {"name": number | {"value", "dataset"?, "split"?}}')
    reg.add_argument("--params", help="JSON file: an object of hyperparameters")
    reg.add_argument("--card", help="model card (Hugging Face README.md) to post for the version")
    reg.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="a tag; repeat for several")
    reg.add_argument("--alias", help="point this alias (e.g. candidate) at the registered version")
    reg.add_argument("--create-model", action="store_true", help="create the model first if it does not exist")
    reg.add_argument(
        "--artifact-uri",
        help="where the files live: registry:// (default: upload them here), s3://bucket/prefix "
        "or hf://org/repo@<commit> (nothing is uploaded)",
    )
    reg.add_argument("--jobs", type=_count(1), default=4, help="parallel uploads (default 4)")
    reg.add_argument("--source-commit", help="commit SHA (default: $GITHUB_SHA or $CI_COMMIT_SHA)")
    reg.add_argument(
        "--source-repo", help="repository URL (default: $GITHUB_SERVER_URL/$GITHUB_REPOSITORY or $CI_PROJECT_URL)"
    )
    reg.add_argument(
        "--source-branch", help="branch (default: $GITHUB_HEAD_REF/$GITHUB_REF_NAME or $CI_COMMIT_REF_NAME)"
    )
    reg.add_argument("--ci-run-url", help="CI run URL (default: the GitHub Actions run or $CI_PIPELINE_URL)")
    reg.add_argument(
        "--run-id",
        metavar="UUID",
        help="the OpenLineage run that produced the version: the runId (8-4-4-4-12 hex digits) of the training "
        f"run's events, sent by the identity that registers (default: ${RUN_ID_VARIABLE}). A require_lineage policy "
        "reads that run's inputs and commit",
    )
    reg.set_defaults(func=cmd_register)

    dig = sub.add_parser("digest", help="print the digest of a directory, computed locally")
    dig.add_argument("--path", required=True, help="directory (or single file)")
    dig.add_argument("--manifest", action="store_true", help='print {"digest", "files": [...]} as JSON instead')
    dig.set_defaults(func=cmd_digest)

    res = sub.add_parser("resolve", help="print the version an alias points to, as JSON")
    _add_common(res, top=False)
    res.add_argument("--model", required=True, help="namespace/name")
    res.add_argument("--alias", required=True, help="alias name, e.g. champion")
    res.set_defaults(func=cmd_resolve)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"{PROG}: error: {mask_url_credentials(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
