"""An approval's kick of the reconciler is published once, without Celery's publish retries: the approval's request
waited for them (each up to the broker's 5 s socket timeout) while the broker did not answer, 10 to 15 s, in the
request thread. The periodic reconcile covers a lost kick.
Real gunicorn and a private Redis that holds every write (CLIENT PAUSE WRITE: the publish waits for an answer that
does not come)."""

import time

import pytest
from redis import Redis

from governance.models import DeploymentTarget
from tests import processes
from tests.deployment.conftest import Stack, request_promotion, stop_stack

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TOKEN = "r8_silent-broker-token"  # noqa: S105 - never sent: no worker runs here


def test_an_approval_does_not_wait_for_a_silent_broker(users, tmp_path):
    processes.require_postgresql()
    redis = processes.Redis(processes.free_port(), tmp_path / "redis.log")
    redis.start()
    env = processes.service_env(redis.url, DATA_DIR=str(tmp_path / "data"), REPLICATE_TOKEN_SILENT=TOKEN)
    port = processes.free_port()
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, workdir=tmp_path, redis=redis, tokens=users)
    try:
        stack.web = processes.start_web(env, tmp_path / "web.log", port)
        with stack.api("owner") as owner, stack.api("admin") as admin, stack.api("reviewer") as reviewer:
            promotion = request_promotion(
                owner,
                admin,
                host_revision="acme/churn:" + "a" * 64,
                name="rep",
                kind="replicate",
                config={"owner": "acme", "deployment": "churn", "model": "acme/churn"},
                credentials_ref="env:REPLICATE_TOKEN_SILENT",
            )

            Redis(port=redis.port).client_pause(60_000, all=False)  # writes only: the broker stops answering
            try:
                started = time.monotonic()
                approved = reviewer.post(f"/promotions/{promotion}/approve", json={})
                took = time.monotonic() - started
            finally:
                Redis(port=redis.port).client_unpause()
        log = (tmp_path / "web.log").read_text()
    finally:
        stop_stack(stack)

    assert approved.status_code == 200 and approved.json()["state"] == "approved", approved.text
    assert DeploymentTarget.objects.get(name="rep").desired_release.number == 1  # the approval committed
    assert "could not enqueue reconcile of target" in log, log[-3000:]
    # One publish, given up after the broker's socket timeout (5 s). With the publish retries, each waiting as long,
    # it took 10 s at the very least.
    assert took < 9, f"the approval took {took:.1f} s"
