"""A self-hosted reconcile stopped at its soft time limit (RECONCILE_MAX_HOLD_SECONDS) after its new model server is
ready and in a HAProxy slot at weight 0, while it waits for HAProxy's check to pass: before any traffic moved. The
release fails and the fallback finds the last good release serving, so it deploys nothing and retires nothing: the
deploy itself must put the slot back in maint, stop the server and forget it. Real HAProxy, a real prefork worker
(where time limits apply) and Redis; the server is tests/hosts/unchecked_server.py (healthy to the adapter's probe,
never to HAProxy's check)."""

import os
import re
import signal
import subprocess
import sys

import pytest

from governance import deployment
from governance.hosts.self_hosted import SelfHostedHost, State, process_alive
from governance.models import DeploymentTarget, Release
from registry import services as registry
from tests import processes
from tests.celery_limits.conftest import in_log, start_worker
from tests.deployment.test_soft_limit_self_hosted import register
from tests.hosts.test_interrupted_deploy import runs, unchecked

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HOLD = 3
ENQUEUE = "import django; django.setup(); from governance import deployment_tasks as t; t.reconcile_target.delay({})"


def test_a_reconcile_stopped_while_haproxy_checks_its_server_leaves_no_server_behind(
    redis,
    selfhost_fleet,
    tmp_path,
    settings,
    django_user_model,
):
    settings.DATA_DIR = str(tmp_path / "data")  # the worker's too: both copy release files to the same place
    owner = django_user_model.objects.create_user(username="owner", password="pw-owner-123456")
    model = registry.model_create(actor=owner, namespace="acme", name="churn")
    v1, v2 = register(owner, model, b"weights 1"), register(owner, model, b"weights 2")
    pids = tmp_path / "pids"
    pids.mkdir()
    state_dir = tmp_path / "serving"
    # ready_timeout bounds the wait for HAProxy's check too (at most 30 s): far beyond the soft limit
    config = selfhost_fleet.host_config(state_dir=str(state_dir), ready_timeout=600, command=unchecked(pids))
    target = DeploymentTarget.objects.create(name="local", kind="self_hosted", stage="production", config=config)
    try:
        first = Release.objects.create(target=target, version=v1, number=1)
        DeploymentTarget.objects.filter(pk=target.pk).update(desired_release=first)
        assert deployment.reconcile(target.pk, owner="test") == "converged"  # release 1 live, in this process
        serving_slot = State(state_dir).load()[1].slot

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
        worker = start_worker(env, log, "-P", "prefork", "-c", "1", "-n", f"window-{redis.port}@%h")
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
            assert f"Soft time limit ({HOLD}s) exceeded" in log.read_text()
            processes.wait(in_log(log, "'converged'"), 30, f"the fallback reconcile\n{processes.tail(log)}")
            assert "Hard time limit" not in log.read_text()
        finally:
            processes.stop(worker)

        assert not runs(pids, 2), "release 2's server still runs after its release failed"
        # Stopped in the window: its server had a slot (a stop in the ready-wait would have none).
        assert re.search(r"release 2: interrupted deploy undone; pid \d+ stopped, slots \['slot\d'\]", log.read_text())
        records = State(state_dir).load()
        assert sorted(records) == [1], f"the state file still lists {sorted(records)}"
        assert process_alive(records[1])
        slots = {s.name: (s.mode, s.weight) for s in selfhost_fleet.api().servers_state("models")}
        assert slots.pop(serving_slot) == ("ready", 100)
        assert set(slots.values()) == {("maint", 0)}, slots  # the slot release 2 took is free again
        status = SelfHostedHost().status(config, None)
        assert [(s.release_number, s.traffic_percent) for s in status.serving] == [(1, 100)], status
    finally:
        SelfHostedHost().shutdown(config)
        for pid_file in pids.glob("pid-*"):
            if runs(pids, int(pid_file.name.removeprefix("pid-"))):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
