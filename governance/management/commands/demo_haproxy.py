"""Run the demo HAProxy in the foreground; when it stops, stop the model servers behind it (DEBUG only)."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from governance import demo
from governance.hosts.base import HostError
from governance.hosts.haproxy import HAProxyFleet
from governance.hosts.self_hosted import SelfHostedHost

INSTALL = "apt-get install -y haproxy"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop(process: subprocess.Popen, grace: float = 5.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _Stop(Exception):
    pass


# Ctrl-C; SIGTERM from dev.py, a process manager or a test; SIGHUP when the terminal closes or SSH drops. HAProxy,
# in this process group, may get that SIGHUP too: it only makes it log its servers' state, so this stops it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_stop(signum, frame):
    raise _Stop


class Command(BaseCommand):
    help = (
        "Run HAProxy for the self-hosted demo in the foreground: traffic on 127.0.0.1:$DEMO_HAPROXY_PORT (8080), "
        "runtime API on 127.0.0.1:$DEMO_HAPROXY_ADMIN_PORT (9999), config and pid under DATA_DIR/haproxy. "
        "On SIGTERM, SIGHUP or Ctrl-C it stops the model servers of the self-hosted targets behind it, then HAProxy. "
        "Only with DJANGO_DEBUG=1."
    )

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("demo_haproxy is part of the local demo; it runs only with DJANGO_DEBUG=1.")
        binary = haproxy_binary()
        if binary is None:
            raise CommandError(f"haproxy is not installed; the self-hosted demo needs it: {INSTALL}")
        try:
            fleet = demo.fleet()
        except demo.DemoError as exc:
            raise CommandError(str(exc)) from None
        owner_path = fleet.workdir / "demo_haproxy.pid"
        owner = _read_pid(owner_path)
        if owner is not None and owner != os.getpid() and "demo_haproxy" in _cmdline(owner):
            raise CommandError(
                f"the demo HAProxy of {settings.DATA_DIR} already runs (manage.py demo_haproxy, pid {owner})"
            )
        self.stop_leftover(fleet)
        self.stop_model_servers(fleet)  # anything a killed earlier run left behind
        busy = [port for port in (fleet.port, fleet.admin_port) if port_in_use(port)]
        if busy:
            raise CommandError(
                f"port {busy[0]} on 127.0.0.1 is in use; set DEMO_HAPROXY_PORT / DEMO_HAPROXY_ADMIN_PORT to free ones"
            )
        fleet.workdir.mkdir(parents=True, exist_ok=True)
        owner_path.write_text(f"{os.getpid()}\n")
        fleet.config_path.write_text(fleet.config_text())
        check = subprocess.run([binary, "-c", "-q", "-f", str(fleet.config_path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise CommandError(f"haproxy refused {fleet.config_path}: {check.stderr.strip() or check.stdout.strip()}")

        previous = {sig: signal.signal(sig, _raise_stop) for sig in STOP_SIGNALS}
        process = None
        stopped = False
        try:
            # -db: stay in the foreground, so this command (and whoever runs it) owns the process. Its
            # messages (servers going up, drained, in maintenance) go to a log file next to the config.
            log_path = fleet.workdir / "haproxy.log"
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [binary, "-db", "-f", str(fleet.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            fleet.pid_path.write_text(f"{process.pid}\n")
            self.wait_ready(fleet, process, log_path)
            self.stdout.write(
                f"HAProxy (pid {process.pid}) serves {fleet.url}/ ; runtime API on {fleet.admin_address}; "
                f"config {fleet.config_path}, log {log_path}",
            )
            self.stdout.flush()
            code = process.wait()
        except _Stop:
            stopped = True
        finally:
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the cleanup short
            self.stop_model_servers(fleet)
            if process is not None:
                _stop(process)
            for path in (fleet.pid_path, owner_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if not stopped:
            raise CommandError(f"haproxy exited with status {code}")

    def wait_ready(self, fleet: HAProxyFleet, process: subprocess.Popen, log_path: Path, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-5:])
                raise CommandError(f"haproxy exited with status {process.returncode} while starting: {tail}")
            try:
                fleet.api().servers_state(fleet.backend)
                return
            except HostError:
                if time.monotonic() > deadline:
                    raise CommandError(f"haproxy's runtime API at {fleet.admin_address} did not answer") from None
                time.sleep(0.05)

    def stop_leftover(self, fleet: HAProxyFleet) -> None:
        """An HAProxy of an earlier run that was killed before it could stop its own (same config file)."""
        pid = fleet.pid()
        if pid is not None and str(fleet.config_path) in _cmdline(pid) and "haproxy" in _cmdline(pid):
            self.stdout.write(f"Stopping the HAProxy an earlier run left behind (pid {pid})")
            fleet.stop()

    def stop_model_servers(self, fleet: HAProxyFleet) -> None:
        """Slots to maint and every model server stopped, for each self-hosted target behind this HAProxy."""
        configs = {str(demo.target_config(fleet)["state_dir"]): demo.target_config(fleet)}
        try:
            for target in demo.demo_targets(fleet):
                configs.setdefault(target.config.get("state_dir", ""), target.config)
        except Exception as exc:  # noqa: BLE001 - the database may be gone; still stop the demo's own servers
            self.warn(f"could not list self-hosted targets: {exc}")
        host = SelfHostedHost()
        for config in configs.values():
            try:
                host.shutdown(config)
            except Exception as exc:  # noqa: BLE001 - stop what can be stopped
                self.warn(f"could not stop the model servers of {config.get('state_dir')}: {exc}")

    def warn(self, message: str) -> None:
        """To stderr, if it is still there: after SIGHUP the terminal is gone, and the cleanup must go on."""
        with contextlib.suppress(OSError):
            self.stderr.write(message)
