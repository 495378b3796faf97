"""Self-hosted model servers behind HAProxy: one server process per release, traffic moved by weights.

`deploy(spec)` starts a model server for the release (the target's `command` template; by default
the reference KServe v2 server, governance.hosts.model_server) on a free port, waits for
`/v2/health/ready`, puts it in a free HAProxy server slot (runtime API: address, weight 0, state
ready), waits for HAProxy's own health check to pass, then moves the traffic in one runtime API
round trip: the new slot's weight up, the others' to 0 and `state drain`. No reload; requests in
flight on the old server finish there. The previous `keep_previous` releases keep running, drained,
so a rollback (a deploy of an earlier spec) is only a weight change. Older releases are retired:
when their in-flight requests are done their slot goes to `maint` and the process gets SIGTERM
(the reference server finishes what it is answering, then exits).

State (which process and which slot belong to which release) lives in `state_dir` as a JSON file
replaced atomically, under an flock, so a worker killed at any point leaves a recoverable state:
a deploy of the same spec finds the running process (pid + its start time, so a reused pid is not
mistaken for it), or restarts it if it died, and re-applies slot and weights. A deploy interrupted before the
traffic reaches its new server (a timeout, a HAProxy that stops answering, the reconcile's soft time limit) undoes
it: slot back to maint, process stopped, record dropped (`SelfHostedHost._undone_if_interrupted`). `status()` reads
the slots from HAProxy itself and maps them to releases through that file.

No Django here.
"""

import contextlib
import fcntl
import http.client
import ipaddress
import json
import logging
import os
import re
import shlex
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from core.errors import InvalidInput  # the one error hierarchy (plain Python, no Django)
from governance.hosts.base import DeployResult, Health, HostError, HostStatus, ReleaseSpec, Serving
from governance.hosts.config import check_fields
from governance.hosts.environment import child_env
from governance.hosts.haproxy import RuntimeAPI, ServerState, free_port, parse_address

KIND = "self_hosted"
CAPABILITIES = frozenset({"deploy", "rollback", "traffic_split", "health"})

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_COMMAND = (
    "{python} -m governance.hosts.model_server --model-dir {model_dir} --name {name} --port {port}"
    " --host {host} --version-label {version}"
)
PLACEHOLDERS = frozenset({"python", "model_dir", "port", "name", "version", "host", "release"})
DEFAULTS = {
    "haproxy_admin": "127.0.0.1:9999",
    "backend": "models",
    "host": "127.0.0.1",
    "listen": "",
    "command": DEFAULT_COMMAND,
    "model_name": "",
    "state_dir": "",
    "ready_timeout": 60,
    "drain_timeout": 30,
    "keep_previous": 2,
}
# Beyond the common allow-list: what GPU and ONNX runtimes read (libraries, devices, threads) and the reference
# server's access-log switch. Not secrets; everything else of the worker's environment stays behind.
SERVER_ENV = ("LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MODEL_SERVER_ACCESS_LOG")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
LOCK_TIMEOUT = 300.0
STOP_GRACE = 10.0
UNDO_TIMEOUT = 1.0  # each runtime API call of an interrupted deploy's undo: it must end before the hard time limit


def server_env() -> dict[str, str]:
    """A model server's environment: the allow-list (governance.hosts.environment), never the worker's secrets,
    and the project root on PYTHONPATH for the reference server."""
    env = child_env(SERVER_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def validate_config(config: dict) -> dict:
    """Every field is optional; see DEFAULTS. Unknown fields, secrets and bad values are refused."""
    checked = check_fields(
        config,
        kind=KIND,
        required={},
        optional={
            "command": str,
            "haproxy_admin": str,
            "backend": str,
            "listen": str,
            "host": str,
            "model_name": str,
            "state_dir": str,
            "ready_timeout": int,
            "drain_timeout": int,
            "keep_previous": int,
        },
    )
    errors = {}
    if "command" in checked:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(checked["command"]) if f is not None}
            shlex.split(checked["command"])
        except ValueError as exc:
            errors["config.command"] = [f"Not a valid command template: {exc}."]
        else:
            unknown = sorted(names - PLACEHOLDERS)
            if unknown:
                errors["config.command"] = [
                    f"Unknown placeholders {unknown}; use {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}."
                ]
            elif "port" not in names:
                errors["config.command"] = ["The command must take the port: include {port}."]
    if "haproxy_admin" in checked:
        try:
            parse_address(checked["haproxy_admin"])
        except ValueError as exc:
            errors["config.haproxy_admin"] = [str(exc)]
    for key in ("backend", "model_name"):
        if key in checked and not NAME_RE.match(checked[key]):
            errors[f"config.{key}"] = ["Letters, digits, '.', '_' and '-' only."]
    if "state_dir" in checked and not os.path.isabs(checked["state_dir"]):
        errors["config.state_dir"] = ["Must be an absolute path."]
    for key, low, high in (("ready_timeout", 1, 3600), ("drain_timeout", 0, 3600), ("keep_previous", 0, 6)):
        if key in checked and not low <= checked[key] <= high:
            errors[f"config.{key}"] = [f"Must be between {low} and {high}."]
    if errors:
        first = next(iter(errors))
        raise InvalidInput(f"Invalid {KIND} config: {first}: {errors[first][0]}", detail=errors)
    return checked


def releases_kept(config: dict) -> int:
    """How many earlier releases a target keeps running beside the current ones (for instant rollback)."""
    return Settings.of(config).keep_previous


def resources(config: dict, credentials_ref: str) -> frozenset[str]:
    """What on this machine a target with this config controls: its HAProxy backend and its state
    directory (which records the release numbers it runs). Two targets must share neither: one would
    deploy into the other's traffic."""
    settings = Settings.of(config)
    return frozenset(
        {
            f"HAProxy backend {settings.backend} at {admin_key(settings.admin)}",
            f"state directory {os.path.realpath(settings.state_dir)}",
        }
    )


def admin_key(address: str) -> str:
    """One spelling per runtime API socket, so that no two spellings of one address (`127.0.0.1:9999`,
    `ipv4@127.0.0.1:9999`, `localhost:9999`) let two targets own one backend. A unix socket by its real path."""
    family, where = parse_address(address)
    if family == socket.AF_UNIX:
        return f"unix@{os.path.realpath(where)}"
    host, port = where
    host = host.lower().rstrip(".")
    if host == "localhost":  # what the runtime API client connects to for it
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # another host name: compared as written (resolving it here would ask the DNS)
        return f"{'ipv6' if family == socket.AF_INET6 else 'ipv4'}@{host}:{port}"
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return f"ipv{ip.version}@{ip.compressed}:{port}"


@dataclass(frozen=True)
class Settings:
    admin: str
    backend: str
    host: str
    listen: str
    command: str
    model_name: str
    state_dir: Path
    ready_timeout: float
    drain_timeout: float
    keep_previous: int

    @classmethod
    def of(cls, config: dict) -> "Settings":
        try:
            values = {**DEFAULTS, **validate_config(config or {})}
        except InvalidInput as exc:  # the target's config was changed under the reconciler
            raise HostError(f"invalid self-hosted config: {exc}", retryable=False) from exc
        state_dir = values["state_dir"] or os.path.join(
            tempfile.gettempdir(),
            "registry-self-hosted",
            re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{values['haproxy_admin']}-{values['backend']}"),
        )
        return cls(
            admin=values["haproxy_admin"],
            backend=values["backend"],
            host=values["host"],
            listen=values["listen"],
            command=values["command"],
            model_name=values["model_name"],
            state_dir=Path(state_dir),
            ready_timeout=float(values["ready_timeout"]),
            drain_timeout=float(values["drain_timeout"]),
            keep_previous=values["keep_previous"],
        )

    def endpoint_url(self, model_name: str = "") -> str:
        if not self.listen:
            return ""
        return f"http://{self.listen}/v2/models/{model_name}" if model_name else f"http://{self.listen}"


@dataclass
class Record:
    """One release's model server: its process, its port and its HAProxy slot."""

    release: int
    host_release_id: str
    digest: str
    version: str
    model_name: str
    model_dir: str
    argv: list[str]
    port: int
    pid: int
    proc_start: str  # /proc/<pid>/stat start time: tells our process from a later one with the same pid
    log_path: str
    slot: str = ""
    started_at: float = 0.0
    last_served: float = 0.0  # when it last had traffic (retention keeps the most recent)
    extra: dict = field(default_factory=dict)

    @property
    def has_served(self) -> bool:
        """This process has had traffic: a restarted server inherits its release's last_served, not its start."""
        return self.last_served > self.started_at


@dataclass
class _Attempt:
    """One deploy's server until traffic reaches it: what to undo if the deploy is interrupted before then."""

    server: Record | None = None  # the release's server this deploy brings up, started or found running
    started: bool = False  # this deploy started it
    shift_sent: bool = False  # the traffic shift went to HAProxy, which may have applied it


class State:
    """releases.json in the state directory, replaced atomically."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / "releases.json"

    def load(self) -> dict[int, Record]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise HostError(f"self-hosted state {self.path} is corrupt: {exc}", retryable=False) from exc
        return {int(k): Record(**v) for k, v in raw.get("releases", {}).items()}

    def save(self, records: dict[int, Record]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"releases": {str(k): asdict(v) for k, v in sorted(records.items())}}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".releases.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT):
        """One deploy or traffic change per backend at a time, across processes. Released if we die."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "lock", "a+") as handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise HostError("another deploy on this backend holds the lock", retryable=True) from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def busy(self) -> bool:
        """True while a deploy or traffic change holds the lock."""
        try:
            with open(self.directory / "lock", "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                return False
        except BlockingIOError:
            return True
        except OSError:
            return False


# --- processes ---------------------------------------------------------------------------------

_CHILDREN: dict[int, subprocess.Popen] = {}  # processes this Python process started (to reap them)


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of a live (not zombie) process, or None if it is gone."""
    _reap()
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:  # no procfs: the pid alone has to do
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return "?"
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _reap() -> None:
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            del _CHILDREN[pid]


def process_alive(record: Record) -> bool:
    start = proc_start_time(record.pid)
    return start is not None and (start == record.proc_start or "?" in (start, record.proc_start))


def stop_process(record: Record, grace: float = STOP_GRACE) -> None:
    """SIGTERM (the reference server drains and exits), SIGKILL after `grace` seconds."""
    if not process_alive(record):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not process_alive(record):
            return
        time.sleep(0.02)
    if process_alive(record):
        log.warning("model server pid %s ignored SIGTERM for %.0fs; killing it", record.pid, grace)
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGKILL)


def probe_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/v2/health/ready")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def log_tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, errors="replace") as handle:
            return " | ".join(line.rstrip() for line in handle.readlines()[-lines:])
    except OSError:
        return ""


# --- the adapter -------------------------------------------------------------------------------


class SelfHostedHost:
    """The Host protocol (governance.hosts.base) for model servers behind HAProxy's runtime API."""

    capabilities = CAPABILITIES

    # ----- deploy ------------------------------------------------------------------------------

    def deploy(self, spec: ReleaseSpec) -> DeployResult:
        settings = Settings.of(spec.config)
        if spec.release_number <= 0:
            raise HostError("a release number is required", retryable=False)
        api = RuntimeAPI(settings.admin)
        state = State(settings.state_dir)
        model_name = self._model_name(settings, spec)
        with state.locked():
            started = time.monotonic()
            records = state.load()
            servers = self._servers(api, settings)
            with self._undone_if_interrupted(settings, state, records) as attempt:
                record = self._ensure_process(settings, state, records, servers, spec, model_name, attempt)
                ready_at = time.monotonic()
                slot = self._ensure_slot(api, settings, state, records, servers, record)
                split = _check_split(dict(spec.traffic)) if spec.traffic else {record.release: 100}
                self._check_receivers(api, settings, records, split)
                self._shift(api, settings, state, records, split, attempt)
            switched_at = time.monotonic()
            self._retire(api, settings, state, records)
        log.info(
            "self-hosted %s: release %s serves %s%% via %s/%s (process ready %.3fs, switched %.3fs after start)",
            spec.target,
            record.release,
            split.get(record.release, 0),
            settings.backend,
            slot,
            ready_at - started,
            switched_at - started,
        )
        return DeployResult(host_release_id=record.host_release_id, endpoint_url=settings.endpoint_url(model_name))

    @staticmethod
    def _model_name(settings: Settings, spec: ReleaseSpec) -> str:
        if settings.model_name:
            return settings.model_name
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.model.rsplit("/", 1)[-1]).strip("-.")
        return name or "model"

    @staticmethod
    def _host_release_id(spec: ReleaseSpec) -> str:
        digest = spec.digest.removeprefix("sha256:")[:12]
        return f"{spec.target}/r{spec.release_number}" + (f"@{digest}" if digest else "")

    def _render(self, settings: Settings, spec: ReleaseSpec, model_name: str, port: int) -> list[str]:
        values = {
            "python": sys.executable,
            "model_dir": spec.artifact_dir or "",
            "port": str(port),
            "name": model_name,
            "version": str(spec.version_number),
            "host": settings.host,
            "release": str(spec.release_number),
        }
        return [token.format(**values) for token in shlex.split(settings.command)]

    def _ensure_process(
        self,
        settings: Settings,
        state: State,
        records: dict[int, Record],
        servers: dict[str, ServerState],
        spec: ReleaseSpec,
        model_name: str,
        attempt: _Attempt,
    ) -> Record:
        record = records.get(spec.release_number)
        if record and spec.digest and record.digest and record.digest != spec.digest:
            raise HostError(
                f"release {spec.release_number} already runs digest {record.digest}, not {spec.digest}", retryable=False
            )
        if record is None:
            record = self._adopt(settings, state, records, servers, spec, model_name)
        if record is not None and process_alive(record):
            attempt.server = record
            if probe_ready(settings.host, record.port):
                return record
            # Started by a deploy that did not see it ready (a worker killed mid-deploy): wait for it.
            log.info("release %s: pid %s is running but not ready yet; waiting", record.release, record.pid)
            try:
                self._wait_ready(settings, state, records, record, spec)
                return record
            except _ExitedEarly:
                pass
        if record is not None:
            log.info("release %s: its process (pid %s) is gone; restarting it", record.release, record.pid)
        return self._start(settings, state, records, spec, model_name, attempt, previous=record)

    def _adopt(
        self,
        settings: Settings,
        state: State,
        records: dict[int, Record],
        servers: dict[str, ServerState],
        spec: ReleaseSpec,
        model_name: str,
    ) -> Record | None:
        """A rollback recorded as a new release of an old version reuses the old release's running process. Never
        one that serves or is to serve (a canary of the serving version): renaming it would take that release
        off the host, and the split naming it would be refused."""
        if not spec.digest:
            return None
        keep = {number for number, _ in spec.traffic}
        for number, other in sorted(records.items(), reverse=True):
            if number in keep or self._receives_traffic(settings, servers, other):
                continue
            as_other = replace(spec, artifact_dir=other.model_dir)
            same = (
                other.digest == spec.digest
                and other.version == str(spec.version_number)
                and other.model_name == model_name
                and other.argv == self._render(settings, as_other, model_name, other.port)
            )
            if same and process_alive(other):
                log.info("release %s reuses the running server of release %s", spec.release_number, number)
                del records[number]
                other.release = spec.release_number
                other.host_release_id = self._host_release_id(spec)
                records[spec.release_number] = other
                state.save(records)
                return other
        return None

    @staticmethod
    def _receives_traffic(settings: Settings, servers: dict[str, ServerState], record: Record) -> bool:
        """HAProxy sends the record's server traffic: through its slot, or a slot at its address."""
        return any(
            server.receives_traffic
            for server in servers.values()
            if server.name == record.slot or (server.addr == settings.host and server.port == record.port)
        )

    def _start(
        self,
        settings: Settings,
        state: State,
        records: dict[int, Record],
        spec: ReleaseSpec,
        model_name: str,
        attempt: _Attempt,
        previous: Record | None,
    ) -> Record:
        if not spec.artifact_dir or not os.path.isdir(spec.artifact_dir):
            raise HostError(
                f"release {spec.release_number}: artifact directory {spec.artifact_dir!r} does not exist "
                "(the reconciler materializes the version's files before deploying)",
                retryable=False,
            )
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = str(settings.state_dir / f"release-{spec.release_number}.log")
        env = server_env()
        used_ports = {r.port for r in records.values()}
        failures = []
        for _attempt in range(2):  # a second try covers a port taken between our probe and the server's bind
            port = free_port(settings.host)
            while port in used_ports:
                port = free_port(settings.host)
            argv = self._render(settings, spec, model_name, port)
            with open(log_path, "ab") as log_file:
                log_file.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {shlex.join(argv)}\n".encode())
                log_file.flush()
                try:
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        cwd=str(PROJECT_ROOT),
                        env=env,
                        start_new_session=True,  # survives the worker that started it
                    )
                except OSError as exc:
                    raise HostError(f"cannot start {argv[0]!r}: {exc}", retryable=False) from exc
            _CHILDREN[proc.pid] = proc
            record = Record(
                release=spec.release_number,
                host_release_id=self._host_release_id(spec),
                digest=spec.digest,
                version=str(spec.version_number),
                model_name=model_name,
                model_dir=spec.artifact_dir,
                argv=argv,
                port=port,
                pid=proc.pid,
                proc_start=proc_start_time(proc.pid) or "?",
                log_path=log_path,
                slot=previous.slot if previous else "",
                started_at=time.time(),
                last_served=previous.last_served if previous else 0.0,
            )
            attempt.server, attempt.started = record, True
            try:
                self._wait_ready(settings, state, records, record, spec)
                return record
            except _ExitedEarly as exc:
                failures.append(str(exc))
        raise HostError(f"release {spec.release_number}: the model server exited: {failures[-1]}", retryable=False)

    def _wait_ready(
        self, settings: Settings, state: State, records: dict[int, Record], record: Record, spec: ReleaseSpec
    ) -> None:
        """Record the server (its pid is on disk before we wait for anything) and wait until it is ready. However
        the wait ends short of that, the deploy's undo (`_undone_if_interrupted`) stops the server."""
        deadline = time.monotonic() + settings.ready_timeout
        delay = 0.02
        records[record.release] = record
        state.save(records)
        while True:
            if not process_alive(record):
                raise _ExitedEarly(log_tail(record.log_path) or f"pid {record.pid} exited")
            if probe_ready(settings.host, record.port, timeout=min(1.0, settings.ready_timeout)):
                return
            if time.monotonic() > deadline:
                raise HostError(
                    f"release {spec.release_number}: model server on port {record.port} not ready after "
                    f"{settings.ready_timeout:.0f}s ({record.log_path}: {log_tail(record.log_path, 3)})",
                    retryable=True,
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    # ----- undoing an interrupted deploy --------------------------------------------------------

    @contextlib.contextmanager
    def _undone_if_interrupted(
        self, settings: Settings, state: State, records: dict[int, Record]
    ) -> Iterator[_Attempt]:
        """Whatever interrupts a deploy before traffic reaches its server undoes what it brought up: the server's
        slots back to maint, its process stopped, its record dropped. A ready timeout, an early exit, HAProxy's check
        failing, a refused split, a HAProxy that stops answering, and equally the reconcile's soft time limit
        (RECONCILE_MAX_HOLD_SECONDS) or a worker shutting down. Nothing else would: the release fails, and the
        fallback to the last good release (still serving) deploys nothing and retires nothing.

        Undone: the server this deploy started, and equally a never-served one it found running (an earlier
        attempt's, killed before it could undo anything): nothing relies on a server that never had traffic, and a
        retry starts it afresh, so it cannot idle at weight 0 for good. Never undone: a server that has had traffic
        since it started (a rollback's, adopted from another release number), one whose slot HAProxy shows taking
        traffic, and anything once the shift was sent (HAProxy may have applied it). When HAProxy does not answer,
        only a server this deploy started is stopped: it was never given any weight but 0."""
        attempt = _Attempt()
        try:
            yield attempt
        except BaseException:
            try:
                self._undo(settings, state, records, attempt)
            except Exception:
                log.exception("could not undo the interrupted deploy of release %s", attempt.server.release)
            raise

    def _undo(self, settings: Settings, state: State, records: dict[int, Record], attempt: _Attempt) -> None:
        record = attempt.server
        if record is None or attempt.shift_sent:
            return
        backend = settings.backend
        api = RuntimeAPI(settings.admin, timeout=UNDO_TIMEOUT)
        try:
            servers = api.servers_state(backend)
        except HostError:
            if not attempt.started:
                return
            servers, at_address = None, []
        else:
            at_address = [s for s in servers if s.addr == settings.host and s.port == record.port]
            if record.has_served or any(s.receives_traffic for s in at_address):
                return
        # Its slots: any at its address, and the one it inherited from a dead predecessor (not at its address yet).
        others = {r.slot for r in records.values() if r is not record}
        slots = [
            s.name
            for s in servers or ()
            if (s in at_address or s.name == record.slot) and s.name not in others and not s.receives_traffic
        ]
        for slot in slots:
            with contextlib.suppress(HostError):
                api.run(f"set server {backend}/{slot} weight 0", f"set server {backend}/{slot} state maint")
        stop_process(record, grace=2.0)
        if servers is None and record.slot:
            # The slot may still point at the stopped server: the record keeps it, for a retry to take back (or a
            # full backend to retire).
            log.warning(
                "release %s: interrupted deploy; pid %s stopped, HAProxy did not answer", record.release, record.pid
            )
        else:
            if records.get(record.release) is record:
                del records[record.release]
            log.warning(
                "release %s: interrupted deploy undone; pid %s stopped, slots %s in maint",
                record.release,
                record.pid,
                slots,
            )
        state.save(records)

    # ----- HAProxy slots -----------------------------------------------------------------------

    @staticmethod
    def _servers(api: RuntimeAPI, settings: Settings) -> dict[str, ServerState]:
        servers = {s.name: s for s in api.servers_state(settings.backend)}
        if not servers:
            raise HostError(f"HAProxy backend {settings.backend!r} has no server slots", retryable=False)
        return servers

    def _ensure_slot(
        self,
        api: RuntimeAPI,
        settings: Settings,
        state: State,
        records: dict[int, Record],
        servers: dict[str, ServerState],
        record: Record,
    ) -> str:
        """Put the record's server in a slot (weight 0, state ready) and wait for HAProxy's check to pass."""
        at_address = [s for s in servers.values() if s.addr == settings.host and s.port == record.port]
        current = servers.get(record.slot)
        if current is not None and current.addr == settings.host and current.port == record.port:
            slot = current
        elif at_address:  # a worker died between setting the address and writing the state file
            slot = at_address[0]
        else:
            slot = None
        if slot is None or slot.maint:
            if slot is None:
                if current is not None and not any(r.slot == current.name for r in records.values() if r is not record):
                    # Our own slot, whose server was restarted on another port: reuse it, out of rotation.
                    api.run(f"set server {settings.backend}/{current.name} state maint")
                    slot = current
                else:
                    slot = self._free_slot(api, settings, state, records, servers, record)
                api.set_server_addr(settings.backend, slot.name, settings.host, record.port)
            api.run(
                f"set server {settings.backend}/{slot.name} weight 0",
                f"set server {settings.backend}/{slot.name} state ready",
            )
        if record.slot != slot.name:
            record.slot = slot.name
            state.save(records)
        self._wait_checked(api, settings, slot.name)
        return slot.name

    def _free_slot(
        self,
        api: RuntimeAPI,
        settings: Settings,
        state: State,
        records: dict[int, Record],
        servers: dict[str, ServerState],
        record: Record,
    ) -> ServerState:
        claimed = {r.slot for r in records.values() if r is not record and r.slot and process_alive(r)}
        for server in servers.values():
            if server.maint and server.name not in claimed:
                return server
        # Full: retire the least recently served release that has no traffic now.
        idle = [
            r
            for r in records.values()
            if r is not record and r.slot in servers and not servers[r.slot].receives_traffic
        ]
        if idle:
            victim = min(idle, key=lambda r: (r.last_served, r.release))
            self._retire_one(api, settings, state, records, victim)
            return self._servers(api, settings)[victim.slot]
        raise HostError(
            f"all {len(servers)} server slots of {settings.backend} are in use; add slots to the server-template",
            retryable=False,
        )

    def _wait_checked(self, api: RuntimeAPI, settings: Settings, slot: str) -> None:
        deadline = time.monotonic() + min(settings.ready_timeout, 30.0)
        while True:
            server = self._servers(api, settings)[slot]
            if server.up and (server.check_passed or not server.checked):
                return
            if time.monotonic() > deadline:
                api.run(f"set server {settings.backend}/{slot} state maint")
                raise HostError(
                    f"HAProxy does not see {settings.backend}/{slot} ({server.addr}:{server.port}) as healthy "
                    f"(op state {server.op_state}, check result {server.check_result}); put it back in maint",
                    retryable=True,
                )
            time.sleep(0.01)

    def _shift(
        self,
        api: RuntimeAPI,
        settings: Settings,
        state: State,
        records: dict[int, Record],
        split: dict[int, int],
        attempt: _Attempt | None = None,
    ) -> None:
        """Weights = percents, in one round trip: raise the receivers first, then zero and drain the rest."""
        backend = settings.backend
        raise_cmds, lower_cmds = [], []
        for number, record in sorted(records.items()):
            if not record.slot:
                continue
            percent = split.get(number, 0)
            if percent > 0:
                raise_cmds += [
                    f"set server {backend}/{record.slot} weight {percent}",
                    f"set server {backend}/{record.slot} state ready",
                ]
            else:
                lower_cmds += [
                    f"set server {backend}/{record.slot} weight 0",
                    f"set server {backend}/{record.slot} state drain",
                ]
        # Slots that are not ours but take traffic (left over from a lost state file) stop too.
        ours = {r.slot for r in records.values()}
        for server in self._servers(api, settings).values():
            if server.name not in ours and server.receives_traffic:
                log.warning(
                    "slot %s/%s serves %s:%s, unknown to the state file; draining it",
                    backend,
                    server.name,
                    server.addr,
                    server.port,
                )
                lower_cmds += [
                    f"set server {backend}/{server.name} weight 0",
                    f"set server {backend}/{server.name} state drain",
                ]
        if attempt is not None:
            attempt.shift_sent = True
        api.run(*raise_cmds, *lower_cmds)
        now = time.time()
        for number, percent in split.items():
            if percent > 0 and number in records:
                records[number].last_served = now
        state.save(records)

    def _retire(self, api: RuntimeAPI, settings: Settings, state: State, records: dict[int, Record]) -> None:
        """Stop the releases beyond the current ones plus the `keep_previous` most recently served."""
        servers = self._servers(api, settings)
        serving = [r for r in records.values() if r.slot in servers and servers[r.slot].receives_traffic]
        others = sorted(
            (r for r in records.values() if r not in serving), key=lambda r: (r.last_served, r.release), reverse=True
        )
        for record in others[settings.keep_previous :]:
            self._retire_one(api, settings, state, records, record)

    def _retire_one(
        self, api: RuntimeAPI, settings: Settings, state: State, records: dict[int, Record], record: Record
    ) -> None:
        backend = settings.backend
        slot = record.slot
        if slot:
            server = self._servers(api, settings).get(slot)
            if server and server.addr == settings.host and server.port == record.port:
                api.run(f"set server {backend}/{slot} weight 0", f"set server {backend}/{slot} state drain")
                deadline = time.monotonic() + settings.drain_timeout
                while api.sessions(backend).get(slot, 0) > 0 and time.monotonic() < deadline:
                    time.sleep(0.02)
                api.run(f"set server {backend}/{slot} state maint")
        stop_process(record)
        records.pop(record.release, None)
        state.save(records)
        log.info("release %s retired: slot %s in maint, pid %s stopped", record.release, slot or "-", record.pid)

    # ----- status ------------------------------------------------------------------------------

    def status(self, config: dict, credentials: str | None) -> HostStatus:
        settings = Settings.of(config)
        api = RuntimeAPI(settings.admin)
        state = State(settings.state_dir)
        servers = self._servers(api, settings)
        records = state.load()
        by_slot = {
            r.slot: r
            for r in records.values()
            if r.slot in servers and servers[r.slot].addr == settings.host and servers[r.slot].port == r.port
        }
        weights: dict[int, int] = {}
        ids: dict[int, str] = {}
        notes, unknown, down = [], [], []
        for name, server in sorted(servers.items()):
            record = by_slot.get(name)
            if record is None:
                if server.receives_traffic:
                    unknown.append(f"{name} ({server.addr}:{server.port}, weight {server.weight})")
                continue
            notes.append(f"{name}=r{record.release} {server.mode} w{server.weight}" + ("" if server.up else " DOWN"))
            if server.receives_traffic:
                weights[record.release] = weights.get(record.release, 0) + server.weight
                ids[record.release] = record.host_release_id
            elif server.weight > 0 and not server.maint and not server.drain:
                down.append(record.release)
        serving = tuple(
            Serving(release_number=n, host_release_id=ids[n], traffic_percent=p)
            for n, p in sorted(_percents(weights).items())
        )
        if unknown:
            notes.append("not in the state file: " + ", ".join(unknown))
        busy = state.busy()
        if busy:
            notes.append("a deploy or traffic change is in progress")
        if serving:
            state_name = "ready"
        elif busy:
            state_name = "deploying"
        elif down:
            state_name = "failed"
            notes.append(f"releases {down} have weight but HAProxy sees their servers down")
        else:
            state_name = "absent"
        model_names = {r.model_name for r in records.values() if r.release in weights}
        return HostStatus(
            state=state_name,
            serving=serving,
            endpoint_url=settings.endpoint_url(model_names.pop() if len(model_names) == 1 else ""),
            detail="; ".join(notes),
        )

    # ----- traffic -----------------------------------------------------------------------------

    def set_traffic(self, config: dict, credentials: str | None, split: dict[int, int]) -> None:
        settings = Settings.of(config)
        split = _check_split(split)
        api = RuntimeAPI(settings.admin)
        state = State(settings.state_dir)
        with state.locked():
            records = state.load()
            self._check_receivers(api, settings, records, split)
            self._shift(api, settings, state, records, split)

    def _check_receivers(self, api: RuntimeAPI, settings: Settings, records: dict[int, Record], split: dict) -> None:
        """Every release given traffic runs and is healthy in HAProxy."""
        servers = self._servers(api, settings)
        for number, percent in split.items():
            if percent == 0:
                continue
            record = records.get(number)
            if record is None or not process_alive(record) or not record.slot:
                raise HostError(f"release {number} is not running on this host: deploy it first", retryable=False)
            server = servers.get(record.slot)
            if server is None or server.port != record.port or server.maint or not server.up:
                raise HostError(
                    f"release {number}'s slot {record.slot} is not healthy in HAProxy; deploy it again",
                    retryable=False,
                )

    # ----- health ------------------------------------------------------------------------------

    def health(self, config: dict, credentials: str | None, release_number: int) -> Health:
        """HAProxy's counters for the release's slot: answers, 5xx and failed responses, average time."""
        settings = Settings.of(config)
        record = State(settings.state_dir).load().get(release_number)
        if record is None or not record.slot:
            raise HostError(f"release {release_number} is not running on this host", retryable=False)
        row = RuntimeAPI(settings.admin).stats(settings.backend).get(record.slot)
        if row is None:
            raise HostError(f"HAProxy has no slot {settings.backend}/{record.slot}", retryable=True)

        def count(*names: str) -> int:
            return sum(int(row.get(name) or 0) for name in names)

        answers = count("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
        failed = count("eresp")  # the server broke the response off
        return Health(
            requests=answers + failed,
            errors=count("hrsp_5xx") + failed,
            latency_ms=float(row["rtime"]) if row.get("rtime") else None,
            up=row.get("status", "").startswith(("UP", "DRAIN", "NOLB")),
        )

    # ----- teardown (tests, demo, decommissioning a target) --------------------------------------

    def shutdown(self, config: dict) -> None:
        """Put every slot this adapter manages in maint and stop all its model servers."""
        settings = Settings.of(config)
        api = RuntimeAPI(settings.admin)
        state = State(settings.state_dir)
        with state.locked():
            records = state.load()
            for record in list(records.values()):
                with contextlib.suppress(HostError):
                    if record.slot:
                        api.run(
                            f"set server {settings.backend}/{record.slot} weight 0",
                            f"set server {settings.backend}/{record.slot} state maint",
                        )
                stop_process(record)
                records.pop(record.release, None)
                state.save(records)


class _ExitedEarly(Exception):
    pass


def _check_split(split: dict) -> dict[int, int]:
    if not isinstance(split, dict) or not split:
        raise HostError("traffic split must be a non-empty {release_number: percent} mapping", retryable=False)
    clean = {}
    for key, value in split.items():
        if isinstance(key, bool) or isinstance(value, bool):
            raise HostError(f"bad traffic split entry {key!r}: {value!r}", retryable=False)
        try:
            number, percent = int(key), int(value)
        except (TypeError, ValueError):
            raise HostError(f"bad traffic split entry {key!r}: {value!r}", retryable=False) from None
        if number <= 0 or not 0 <= percent <= 100 or percent != value:
            raise HostError(f"bad traffic split entry {key!r}: {value!r}", retryable=False)
        clean[number] = percent
    if sum(clean.values()) != 100:
        raise HostError(f"traffic split must add up to 100, not {sum(clean.values())}", retryable=False)
    return clean


def _percents(weights: dict[int, int]) -> dict[int, int]:
    """Weights as whole percents adding up to 100 (largest remainder)."""
    total = sum(weights.values())
    if not total:
        return {}
    exact = {n: 100 * w / total for n, w in weights.items()}
    result = {n: int(v) for n, v in exact.items()}
    for n in sorted(exact, key=lambda n: exact[n] - result[n], reverse=True)[: 100 - sum(result.values())]:
        result[n] += 1
    return result
