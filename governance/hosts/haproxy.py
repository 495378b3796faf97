"""HAProxy runtime API client, and `HAProxyFleet`: a real HAProxy for tests and the demo. No Django here.

The runtime API is HAProxy's stats socket at level admin (`stats socket ipv4@127.0.0.1:<port> level
admin`, or a unix socket). One connection per command line: send the line and a newline, read to
EOF. Several commands may share a line separated by `;` and run in order. A `set` command answers
an empty line on success; anything else is the error text ("No such server."), so any non-empty
reply is a failure (`set server … addr` is the exception: it reports what changed).

Changes take effect on the next request, without a reload. Runtime changes are lost when HAProxy
restarts (unless a server-state-file is configured); the self-hosted adapter notices and re-applies.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from governance.hosts.base import HostError

# srv_admin_state bits (HAProxy include/haproxy/server-t.h)
ADMF_FMAINT = 0x01  # forced by the runtime API / stats page
ADMF_IMAINT = 0x02  # inherited from a tracked server
ADMF_CMAINT = 0x04  # "disabled" in the configuration: remembered, not itself maintenance
ADMF_FDRAIN = 0x08
ADMF_IDRAIN = 0x10
ADMF_RMAINT = 0x20  # DNS resolution failed
ADMF_MAINT = ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT
ADMF_DRAIN = ADMF_FDRAIN | ADMF_IDRAIN
# srv_op_state
OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3
# srv_check_result
CHK_RES_UNKNOWN, CHK_RES_NEUTRAL, CHK_RES_FAILED, CHK_RES_PASSED, CHK_RES_CONDPASS = 0, 1, 2, 3, 4
# srv_check_state bits
CHK_ST_CONFIGURED = 0x02
CHK_ST_ENABLED = 0x04

STATES = ("ready", "drain", "maint")


@dataclass(frozen=True)
class ServerState:
    """One line of `show servers state <backend>`."""

    backend: str
    name: str
    addr: str
    port: int
    op_state: int
    admin_state: int
    weight: int  # the current (user) weight
    initial_weight: int
    check_result: int
    check_state: int

    @property
    def maint(self) -> bool:
        return bool(self.admin_state & ADMF_MAINT)

    @property
    def drain(self) -> bool:
        return bool(self.admin_state & ADMF_DRAIN)

    @property
    def up(self) -> bool:
        """HAProxy sends traffic here if its weight is above 0 (operational and not in maintenance)."""
        return self.op_state in (OP_RUNNING, OP_STARTING) and not self.maint

    @property
    def checked(self) -> bool:
        return bool(self.check_state & CHK_ST_CONFIGURED)

    @property
    def check_passed(self) -> bool:
        return self.check_result in (CHK_RES_PASSED, CHK_RES_CONDPASS)

    @property
    def receives_traffic(self) -> bool:
        return self.up and not self.drain and self.weight > 0

    @property
    def mode(self) -> str:
        return "maint" if self.maint else "drain" if self.drain else "ready"


def parse_address(address: str) -> tuple[int, object]:
    """`ipv4@127.0.0.1:9999`, `127.0.0.1:9999`, `ipv6@::1:9999`, `[::1]:9999`, `unix@/run/haproxy.sock` or
    `/run/haproxy.sock` (HAProxy's own spellings): (socket family, socket address)."""
    address = address.strip()
    if address.startswith("unix@") or address.startswith("/"):
        return socket.AF_UNIX, address.removeprefix("unix@")
    prefix, at, rest = address.partition("@")
    if not at:
        prefix, rest = "", address
    elif prefix not in ("ipv4", "ipv6", "tcp", "tcp4", "tcp6"):
        raise ValueError(f"runtime API address {address!r}: unknown prefix {prefix}@")
    host, sep, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not port.isdecimal() or not host:
        raise ValueError(f"runtime API address {address!r}: expected host:port, ipv4@host:port or unix@/path")
    v6 = ":" in host or prefix in ("ipv6", "tcp6")  # a host name never holds ':'
    if v6 and prefix in ("ipv4", "tcp4"):
        raise ValueError(f"runtime API address {address!r}: an IPv6 address after {prefix}@")
    return (socket.AF_INET6 if v6 else socket.AF_INET), (host, int(port))


class RuntimeAPI:
    """A client for HAProxy's runtime API (stats socket at level admin)."""

    def __init__(self, address: str, *, timeout: float = 5.0):
        self.address = address
        self.family, self.sockaddr = parse_address(address)
        self.timeout = timeout

    def execute(self, command: str) -> str:
        """Send one command line (commands may be joined by `;`) and return the whole reply."""
        if "\n" in command:
            raise ValueError("one command line at a time")
        try:
            with socket.socket(self.family, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.sockaddr)
                sock.sendall(command.encode() + b"\n")
                chunks = []
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except OSError as exc:
            raise HostError(f"HAProxy runtime API at {self.address} unreachable: {exc}", retryable=True) from exc
        return b"".join(chunks).decode(errors="replace")

    def run(self, *commands: str) -> None:
        """Run `set`-style commands in one round trip, in order; any non-empty reply is an error."""
        if not commands:
            return
        reply = self.execute("; ".join(commands)).strip()
        if reply:
            raise HostError(f"HAProxy refused {'; '.join(commands)!r}: {reply}", retryable=False)

    # --- servers -------------------------------------------------------------------------------

    def set_server_addr(self, backend: str, server: str, host: str, port: int) -> None:
        reply = self.execute(f"set server {backend}/{server} addr {host} port {int(port)}").strip()
        # Success reports the change ("IP changed from …", "no need to change the addr, port changed …").
        if "changed" not in reply and "no need to change" not in reply:
            raise HostError(
                f"HAProxy refused the address {host}:{port} for {backend}/{server}: {reply}", retryable=False
            )

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        if not 0 <= int(weight) <= 256:
            raise ValueError("HAProxy weights are 0..256")
        self.run(f"set server {backend}/{server} weight {int(weight)}")

    def set_state(self, backend: str, server: str, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}")
        self.run(f"set server {backend}/{server} state {state}")

    def get_weight(self, backend: str, server: str) -> tuple[int, int]:
        """(current, initial), from `get weight` ("0 (initial 100)")."""
        reply = self.execute(f"get weight {backend}/{server}").strip()
        parts = reply.replace("(", " ").replace(")", " ").split()
        if len(parts) != 3 or parts[1] != "initial" or not parts[0].isdecimal():
            raise HostError(f"HAProxy get weight {backend}/{server}: {reply}", retryable=False)
        return int(parts[0]), int(parts[2])

    def servers_state(self, backend: str) -> list[ServerState]:
        """`show servers state <backend>`, parsed by its header line."""
        reply = self.execute(f"show servers state {backend}")
        lines = [line for line in reply.splitlines() if line.strip()]
        header = next((line for line in lines if line.startswith("#")), None)
        if header is None:
            raise HostError(
                f"HAProxy show servers state {backend}: {reply.strip() or 'empty reply'}",
                retryable="Can't find" not in reply,
            )
        columns = header.lstrip("# ").split()
        result = []
        for line in lines:
            if line.startswith("#") or len(line.split()) < len(columns) or line.strip() == "1":
                continue
            row = dict(zip(columns, line.split(), strict=False))
            if row.get("be_name") != backend:
                continue
            result.append(
                ServerState(
                    backend=backend,
                    name=row["srv_name"],
                    addr=row["srv_addr"],
                    port=int(row.get("srv_port", "0") or 0),
                    op_state=int(row["srv_op_state"]),
                    admin_state=int(row["srv_admin_state"]),
                    weight=int(row["srv_uweight"]),
                    initial_weight=int(row["srv_iweight"]),
                    check_result=int(row.get("srv_check_result", "0")),
                    check_state=int(row.get("srv_check_state", "0")),
                )
            )
        return result

    def stats(self, backend: str) -> dict[str, dict[str, str]]:
        """`show stat` rows of the backend's servers, by server name (counters as HAProxy spells them)."""
        reply = self.execute(f"show stat {backend} 4 -1")
        lines = reply.splitlines()
        if not lines or not lines[0].startswith("# "):
            raise HostError(f"HAProxy show stat {backend}: {reply.strip() or 'empty reply'}", retryable=True)
        columns = lines[0][2:].split(",")
        result = {}
        for line in lines[1:]:
            if not line.strip():
                continue
            row = dict(zip(columns, line.split(","), strict=False))
            if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND"):
                result[row["svname"]] = row
        return result

    def sessions(self, backend: str) -> dict[str, int]:
        """Current sessions (requests in flight or connections held) per server."""
        return {name: int(row.get("scur") or 0) for name, row in self.stats(backend).items()}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class HAProxyFleet:
    """A real HAProxy (Debian `haproxy`) in front of `slots` disabled server slots, for tests and the demo.

    frontend on 127.0.0.1:<port> → backend `models` ← `server-template slot 1-N 127.0.0.1:1 disabled`,
    HTTP health checks on /v2/health/ready every 200 ms, runtime API on ipv4@127.0.0.1:<admin port>.
    Requests that fail to connect, or get an empty answer from a server that closed a keep-alive
    connection, are retried on another server (`retry-on conn-failure empty-response`, `option
    redispatch`), which is what lets a stopped server never cost a client request.
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        port: int | None = None,
        admin_port: int | None = None,
        backend: str = "models",
        slots: int = 8,
        check_inter_ms: int = 200,
        executable: str = "haproxy",
    ):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.admin_port = admin_port or free_port()
        self.backend = backend
        self.slots = slots
        self.check_inter_ms = check_inter_ms
        self.executable = executable
        self.config_path = self.workdir / "haproxy.cfg"
        self.pid_path = self.workdir / "haproxy.pid"

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    @property
    def listen(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def api(self) -> RuntimeAPI:
        return RuntimeAPI(self.admin_address)

    def host_config(self, **extra) -> dict:
        """The self-hosted target configuration for this HAProxy."""
        return {"haproxy_admin": self.admin_address, "backend": self.backend, "listen": self.listen, **extra}

    def config_text(self) -> str:
        inter = self.check_inter_ms
        return f"""\
# Written by governance.hosts.haproxy.HAProxyFleet
global
    maxconn 4096
    stats socket ipv4@127.0.0.1:{self.admin_port} level admin
    stats timeout 30s

defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 10s
    timeout queue 10s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response junk-response

frontend models_in
    bind 127.0.0.1:{self.port}
    default_backend {self.backend}

backend {self.backend}
    balance roundrobin
    option httpchk GET /v2/health/ready
    http-check expect status 200
    default-server inter {inter}ms fastinter {max(inter // 2, 50)}ms downinter {inter}ms rise 1 fall 2 weight 0
    server-template slot 1-{self.slots} 127.0.0.1:1 disabled check
"""

    def start(self, timeout: float = 10.0) -> "HAProxyFleet":
        binary = shutil.which(self.executable) or shutil.which(self.executable, path="/usr/sbin:/sbin")
        if binary is None:
            raise RuntimeError("haproxy is not installed: apt-get install -y haproxy socat")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        subprocess.run(
            [binary, "-c", "-q", "-f", str(self.config_path)], check=True, capture_output=True, timeout=timeout
        )
        subprocess.run(
            [binary, "-f", str(self.config_path), "-D", "-p", str(self.pid_path)],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.api().servers_state(self.backend)
                return self
            except HostError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.05)

    def pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 5.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_running(pid):
            time.sleep(0.02)
        if _pid_running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def __enter__(self) -> "HAProxyFleet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _pid_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
