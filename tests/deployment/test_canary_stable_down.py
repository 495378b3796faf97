"""A canary step is judged only by its gates: the serving release's model server failing HAProxy's check for a moment
(a GC pause, an overloaded box) sends the canary all traffic for that moment, and the host then reports the canary
alone at 100 %. A reconcile reading that must not take it for a finished rollout (the release went live with no
step passed, its serving period opened, the stable release superseded): it puts the step back. Real HAProxy and
model-server processes; the reconciles run in this process."""

import os
import signal

import pytest

from governance import deployment
from governance.choices import ReleaseState
from governance.hosts.self_hosted import SelfHostedHost, State
from governance.models import DeploymentTarget, Release, ServingPeriod
from registry import services as registry
from tests import processes
from tests.deployment.test_soft_limit_self_hosted import register

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SERVER = """
import http.server, sys
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Ok).serve_forever()
"""


def split(config: dict) -> dict[int, int]:
    status = SelfHostedHost().status(config, None)
    return {s.release_number: s.traffic_percent for s in status.serving if s.traffic_percent}


def test_the_stable_server_failing_its_check_mid_canary_does_not_make_the_canary_live(
    selfhost_fleet, tmp_path, settings, django_user_model
):
    settings.DATA_DIR = str(tmp_path / "data")
    owner = django_user_model.objects.create_user(username="owner", password="pw-owner-123456")
    model = registry.model_create(actor=owner, namespace="acme", name="churn")
    v1, v2 = register(owner, model, b"weights 1"), register(owner, model, b"weights 2")
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    state_dir = tmp_path / "serving"
    config = selfhost_fleet.host_config(
        state_dir=str(state_dir), ready_timeout=30, command=f"{{python}} {script} {{port}}"
    )
    rollout = {"steps": [10, 100], "step_seconds": 3600, "max_error_rate": 0.01, "min_requests": 0}
    target = DeploymentTarget.objects.create(
        name="local", kind="self_hosted", stage="production", config=config, rollout=rollout
    )
    stable_pid = None
    try:
        first = Release.objects.create(target=target, version=v1, number=1)
        DeploymentTarget.objects.filter(pk=target.pk).update(desired_release=first)
        assert deployment.reconcile(target.pk, owner="test") == "converged"
        second = Release.objects.create(target=target, version=v2, number=2)
        DeploymentTarget.objects.filter(pk=target.pk).update(desired_release=second)
        assert deployment.reconcile(target.pk, owner="test") == "deploying"
        processes.wait(lambda: split(config) == {1: 90, 2: 10}, 15, "the 10 % step")

        stable_pid = State(state_dir).load()[1].pid
        os.kill(stable_pid, signal.SIGSTOP)  # release 1 stops answering: HAProxy marks it down
        processes.wait(lambda: split(config) == {2: 100}, 15, "HAProxy to send everything to the canary")
        assert deployment.reconcile(target.pk, owner="test") == "deploying"

        second.refresh_from_db()
        first.refresh_from_db()
        assert (second.state, second.traffic_percent, second.live_at) == (ReleaseState.DEPLOYING, 10, None)
        assert first.state == ReleaseState.LIVE
        target.refresh_from_db()
        assert target.last_good_release_id == first.pk
        assert list(ServingPeriod.objects.filter(target=target, ended_at=None).values_list("release", flat=True)) == [
            first.pk
        ]
        os.kill(stable_pid, signal.SIGCONT)
        stable_pid = None
        processes.wait(lambda: split(config) == {1: 90, 2: 10}, 15, "the 10 % step again")
        assert deployment.reconcile(target.pk, owner="test") == "deploying"  # the step goes on, as it began
        assert Release.objects.get(pk=second.pk).step_started_at == second.step_started_at

        # Up but out of the split (a weight set by hand; HAProxy reloaded with its file's weights): the host lost the
        # step, which is put back, not waited for.
        slot = State(state_dir).load()[1].slot
        selfhost_fleet.api().set_weight(config.get("backend", "models"), slot, 0)
        processes.wait(lambda: split(config) == {2: 100}, 15, "the stable release out of the split")
        assert deployment.reconcile(target.pk, owner="test") == "deploying"
        assert split(config) == {1: 90, 2: 10}
    finally:
        if stable_pid is not None:
            os.kill(stable_pid, signal.SIGCONT)
        SelfHostedHost().shutdown(config)
