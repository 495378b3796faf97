"""A self-hosted reconcile stopped at its soft time limit (RECONCILE_MAX_HOLD_SECONDS) while the model server it
started is still loading. The release fails and the fallback reconcile finds the last good release serving, so it
deploys nothing and nothing retires the failed release's server: the adapter itself must stop it and forget it, as
its own ready timeout does. Real HAProxy, a real prefork worker (where time limits apply) and Redis."""

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from governance import deployment
from governance.hosts.self_hosted import SelfHostedHost, State, proc_start_time, process_alive
from governance.models import DeploymentTarget, Release
from registry import services as registry
from tests import processes
from tests.celery_limits.conftest import in_log, redis, start_worker  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HOLD = 3
ENQUEUE = "import django; django.setup(); from governance import deployment_tasks as t; t.reconcile_target.delay({})"
# Release 1 answers /v2/health/ready at once; release 2 loads for longer than a reconcile may run. Each writes its
# pid, so the test can tell whether the server of the failed release still runs once the adapter forgot it.
SERVER = """\
import http.server, os, sys, time
port, release = int(sys.argv[1]), sys.argv[2]
(__import__("pathlib").Path(__file__).parent / f"pid-{release}").write_text(str(os.getpid()))
if release != "1":
    time.sleep(600)
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Ready).serve_forever()
"""


def register(owner, model, data: bytes):
    sha = hashlib.sha256(data).hexdigest()
    registry.blob_upload(model=model, chunks=[data], sha256=sha, size=len(data))
    version, _ = registry.version_register(
        actor=owner,
        model=model,
        content=registry.VersionContent(manifest={"files": [{"path": "m.onnx", "size": len(data), "sha256": sha}]}),
    )
    return version


def our_server(pid: int, script: Path) -> bool:
    """The pid is alive and runs this test's server script (not a later process given the same pid)."""
    try:
        return proc_start_time(pid) is not None and str(script).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_a_reconcile_stopped_while_its_server_loads_leaves_no_server_behind(
    redis,  # noqa: F811
    selfhost_fleet,
    tmp_path,
    settings,
    django_user_model,
):
    settings.DATA_DIR = str(tmp_path / "data")  # the worker's too: both copy release files to the same place
    owner = django_user_model.objects.create_user(username="owner", password="pw-owner-123456")
    model = registry.model_create(actor=owner, namespace="acme", name="churn")
    v1, v2 = register(owner, model, b"weights 1"), register(owner, model, b"weights 2")
    script = tmp_path / "server" / "server.py"
    script.parent.mkdir()
    script.write_text(SERVER)
    state_dir = tmp_path / "serving"
    config = selfhost_fleet.host_config(
        state_dir=str(state_dir), ready_timeout=600, command=f"{{python}} {script} {{port}} {{release}}"
    )
    target = DeploymentTarget.objects.create(name="local", kind="self_hosted", stage="production", config=config)
    try:
        first = Release.objects.create(target=target, version=v1, number=1)
        DeploymentTarget.objects.filter(pk=target.pk).update(desired_release=first)
        assert deployment.reconcile(target.pk, owner="test") == "converged"  # release 1 live, in this process

        second = Release.objects.create(target=target, version=v2, number=2)
        DeploymentTarget.objects.filter(pk=target.pk).update(desired_release=second)
        env = processes.service_env(
            redis.url,
            DATA_DIR=settings.DATA_DIR,
            ARTIFACT_ROOT=str(settings.ARTIFACT_ROOT),
            RECONCILE_MAX_HOLD_SECONDS=str(HOLD),
            RECONCILE_LEASE_SECONDS="6",
        )
        log = tmp_path / "worker.log"
        worker = start_worker(env, log, "-P", "prefork", "-c", "1", "-n", f"softlimit-{redis.port}@%h")
        try:
            subprocess.run(
                [sys.executable, "-c", ENQUEUE.format(target.pk)],
                cwd=processes.BASE_DIR,
                env=env,
                check=True,
                timeout=60,
            )

            def failed():
                second.refresh_from_db()
                return second.state == "failed"

            processes.wait(failed, 30, f"release 2 to fail\n{processes.tail(log)}")
            assert "RECONCILE_MAX_HOLD_SECONDS" in second.reason
            # The fallback to release 1 finds it serving: converged, without a deploy (so without a retirement).
            processes.wait(in_log(log, "'converged'"), 30, f"the fallback reconcile\n{processes.tail(log)}")
        finally:
            processes.stop(worker)

        pid = int((script.parent / "pid-2").read_text())  # release 2's server did start
        assert not our_server(pid, script), f"release 2's server (pid {pid}) still runs after its release failed"
        records = State(state_dir).load()
        assert sorted(records) == [1], f"the state file still lists {sorted(records)}"
        assert process_alive(records[1])
        status = SelfHostedHost().status(config, None)
        assert [(s.release_number, s.traffic_percent) for s in status.serving] == [(1, 100)], status
    finally:
        SelfHostedHost().shutdown(config)
        for pid_file in script.parent.glob("pid-*"):
            pid = int(pid_file.read_text())
            if our_server(pid, script):
                os.kill(pid, signal.SIGKILL)
