"""How often the reconciler asks a host about a release that takes long to come up (a Hugging Face endpoint
initializing for minutes), and what the host's passing errors count for meanwhile.

- Only an approval's (rollback's, fallback's) kick polls: every periodic run polled as well, so with beat sending
  one every interval several chains polled (and deployed to) one target at once, a few times the host calls.
  Real web, worker and beat processes on a private Redis, Hugging Face's wire-compatible server.
- Only consecutive host errors fail a release: a poll the host answered ("still deploying") starts the count again.
  Seven 503s spread over a long deploy, each followed by an answered poll, failed it. The task runs in-process
  (eagerly), against the same server."""

import re
import time
from collections import Counter

import pytest
from celery import signals
from django.conf import settings

from governance import deployment_tasks
from governance.choices import ReleaseState
from governance.models import DeploymentTarget, Release
from registry.models import ModelVersion
from registry.services import model_create
from tests import processes
from tests.deployment.conftest import make_stack, request_promotion, stop_stack
from tests.fakes.hf_endpoints_server import HFEndpointsServer
from tests.fakes.httpfake import Reply

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HF_TOKEN = "hf_ReconcileChainsToken0123456789"  # noqa: S105 - the local server's test account
COMMIT = "c" * 40
ENDPOINT = "/v2/endpoint/acme/churn"


@pytest.fixture
def hf():
    with HFEndpointsServer(token=HF_TOKEN, namespaces=("acme",)) as server:
        server.pending_delay, server.init_delay = 0.0, 600.0  # initializing for ten minutes
        server.add_revision("acme/churn", COMMIT)
        yield server


def hf_config(hf) -> dict:
    return {"namespace": "acme", "endpoint": "churn", "repository": "acme/churn", "base_url": hf.api_url}


def endpoint_reads(hf) -> int:
    return sum(1 for r in list(hf.requests) if r["method"] == "GET" and r["path"].rstrip("/") == ENDPOINT)


RETRY = re.compile(r"reconcile_target\[([0-9a-f-]+)\] retry")
DONE = re.compile(r"reconcile_target\[[0-9a-f-]+\] succeeded in [0-9.]+s: '(\w+)'")


def test_periodic_reconciles_do_not_pile_up_polling_chains(users, tmp_path, hf):
    """Beat sends the periodic reconcile every 2 s while the endpoint initializes. The approval's kick is the one
    chain that polls (once a second); each periodic run looks once and ends."""
    stack = make_stack(users, tmp_path, HF_TOKEN_CHAINS=HF_TOKEN)
    try:
        with stack.api("owner") as owner, stack.api("admin") as admin, stack.api("reviewer") as reviewer:
            promotion = request_promotion(
                owner,
                admin,
                host_revision=COMMIT,
                name="hfp",
                kind="hf_endpoint",
                config=hf_config(hf),
                credentials_ref="env:HF_TOKEN_CHAINS",
            )
            approved = reviewer.post(f"/promotions/{promotion}/approve", json={})
            assert approved.status_code == 200, approved.text

        processes.wait(lambda: hf.endpoint("acme", "churn"), 90, f"the endpoint to be created\n{stack.logs()}")
        log = tmp_path / "worker.log"
        reads, started = endpoint_reads(hf), time.monotonic()
        time.sleep(12)
        reads, seconds = endpoint_reads(hf) - reads, time.monotonic() - started
        text = log.read_text()
    finally:
        stop_stack(stack)

    release = Release.objects.get(target__name="hfp", number=1)
    assert release.state == ReleaseState.DEPLOYING, release.reason
    chains = Counter(RETRY.findall(text))
    assert len(chains) == 1, f"{len(chains)} chains polled one target: {chains}\n{processes.tail(log)}"
    # The periodic runs ran, found the endpoint still initializing, and ended there instead of polling.
    outcomes = Counter(DONE.findall(text))
    assert outcomes["deploying"] >= 4, (outcomes, processes.tail(log))
    # A reconcile of an initializing endpoint reads it twice (its status, then the deploy's own look). The kick polls
    # once a second and beat sends a run every 2 s: about 1.5 reconciles a second (it was 3.5 and growing).
    per_reconcile = 2
    assert reads <= per_reconcile * (1.5 * seconds + 3), (reads, seconds)


def test_isolated_host_errors_between_answered_polls_do_not_fail_the_release(monkeypatch, world_hf, hf):
    """Every other run of the task meets a 503 at its first host call; the run after it is answered (the endpoint
    is initializing). The errors never come two in a row, so the release keeps deploying: it failed at the
    seventh (RECONCILE_MAX_RETRIES = 6), the count going on across the answered polls in between."""
    target, release = world_hf
    runs = {"n": 0, "errors": 0, "armed": False}

    def count_run(task=None, **_):
        if task.name == deployment_tasks.reconcile_target.name:
            runs["n"] += 1
            runs["armed"] = runs["n"] % 2 == 1

    def intercept(method, path, body):
        if path.startswith(ENDPOINT) and runs["armed"]:
            runs["armed"] = False
            runs["errors"] += 1
            raise Reply(503, {"error": "Service temporarily unavailable"})

    hf.intercept = intercept
    signals.task_prerun.connect(count_run, weak=False)
    try:
        outcome = deployment_tasks.reconcile_target.apply(args=(target.pk,)).get()
    finally:
        signals.task_prerun.disconnect(count_run)

    release.refresh_from_db()
    assert release.state == ReleaseState.DEPLOYING, release.reason
    assert outcome == "deploying"  # the chain reached its poll limit; the periodic reconcile goes on from here
    assert runs["n"] > deployment_tasks.POLLS
    assert runs["errors"] >= runs["n"] // 2 > settings.RECONCILE_MAX_RETRIES
    assert hf.endpoint("acme", "churn")["status"]["state"] == "initializing"


@pytest.fixture
def world_hf(monkeypatch, hf, django_user_model):
    """An hf_endpoint target whose desired release is version 1 (its commit), nothing deployed yet."""
    monkeypatch.setenv("HF_TOKEN_CHAINS", HF_TOKEN)
    owner = django_user_model.objects.create_user(username="owner", password="pw-owner-123456")
    model = model_create(actor=owner, namespace="acme", name="churn")
    version = ModelVersion.objects.create(
        model=model,
        number=1,
        digest="sha256:" + "1" * 64,
        artifact_uri="s3://acme-models/churn/1",
        manifest={"files": []},
        tags={"host_revision": COMMIT},
    )
    target = DeploymentTarget.objects.create(
        name="hfp",
        kind="hf_endpoint",
        stage="production",
        config=hf_config(hf),
        credentials_ref="env:HF_TOKEN_CHAINS",
    )
    release = Release.objects.create(target=target, version=version, number=1, host_revision=COMMIT)
    DeploymentTarget.objects.filter(pk=target.pk).update(desired_release=release)
    return target, release
