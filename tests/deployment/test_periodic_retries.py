"""The periodic reconcile (reconcile_all) sends each target's reconcile with a max age: one that waited too long in
the queue is skipped. Its retries are not: a retry kept its first run's options, and every retry due after the
first run's expiry was thrown away as revoked, so a target whose host failed was never failed.
A periodic run does not poll (only an approval's or a rollback's kick does): a target another worker holds, or
still deploying, is looked at again by the next periodic run, and is converged once the other worker lets go.
Real Redis, Celery worker and beat, Replicate's wire-compatible server."""

import hashlib
import re
import time

import pytest
from django.utils import timezone

from governance import deployment_tasks
from governance.models import DeploymentTarget, Release
from registry.models import ModelVersion
from registry.services import model_create
from tests import processes
from tests.deployment.conftest import make_stack, stop_stack
from tests.fakes.replicate_server import ReplicateServer

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TOKEN = "r8_periodic-retries-token"  # noqa: S105 - the local server's test account
VERSION = hashlib.sha256(b"periodic").hexdigest()


def desired_release(django_user_model, replicate) -> Release:
    """A Replicate target whose desired release is version 1, nothing deployed yet."""
    owner = django_user_model.objects.get(username="owner")
    model = model_create(actor=owner, namespace="acme", name="churn")
    version = ModelVersion.objects.create(
        model=model,
        number=1,
        digest="sha256:" + VERSION,
        artifact_uri="s3://bucket/churn",
        manifest={"files": []},
        tags={"host_revision": f"acme/churn:{VERSION}"},
    )
    target = DeploymentTarget.objects.create(
        name="rep",
        kind="replicate",
        stage="production",
        config={"owner": "acme", "deployment": "churn", "model": "acme/churn", "base_url": replicate.url},
        credentials_ref="env:REPLICATE_TOKEN_PERIODIC",
    )
    # What a promotion fixes when it is requested (governance.deployment.host_revision_of).
    release = Release.objects.create(target=target, version=version, number=1, host_revision=f"acme/churn:{VERSION}")
    DeploymentTarget.objects.filter(pk=target.pk).update(desired_release=release)
    return release


def live(release: Release):
    def check():
        release.refresh_from_db()
        return release.state == "live"

    return check


def test_host_error_retries_of_a_periodic_reconcile_outlive_its_max_age(users, tmp_path, django_user_model):
    """The host answers 503 for 6 s, past the max age (2 s) of the reconcile the periodic run sends: the retries
    due after it still run, and the release goes live once the host is back."""
    with ReplicateServer(token=TOKEN, username="acme") as replicate:
        replicate.add_version("acme/churn", VERSION)
        stack = make_stack(users, tmp_path, beat=False, REPLICATE_TOKEN_PERIODIC=TOKEN, RECONCILE_MAX_RETRIES="20")
        try:
            release = desired_release(django_user_model, replicate)
            flaky, back_at = replicate.route, time.monotonic() + 6

            def route(method, path, body, headers):
                if time.monotonic() < back_at:
                    replicate.fail(503, "The deployment's region is unavailable.")
                return flaky(method, path, body, headers)

            replicate.route = route
            from config.celery import app

            with app.connection_for_write(stack.redis.url) as connection:  # what beat sends
                deployment_tasks.reconcile_all.apply_async(connection=connection)

            processes.wait(live(release), 60, f"release 1 to go live\n{stack.logs()}")
            assert replicate.releases_created == 1
            log = (tmp_path / "worker.log").read_text()
            assert "reconcile_target" in log and "retry: Retry in" in log
            assert "Discarding revoked task" not in log
            assert "skipping governance.deployment_tasks.reconcile_target" not in log
        finally:
            stop_stack(stack)


def test_a_target_another_worker_holds_is_converged_by_a_later_periodic_run(users, tmp_path, django_user_model):
    """Another worker holds the target. Beat's runs (every 2 s) find it busy and end, without polling; once the other
    worker lets go, a later one converges it."""
    with ReplicateServer(token=TOKEN, username="acme") as replicate:
        replicate.add_version("acme/churn", VERSION)
        stack = make_stack(users, tmp_path, REPLICATE_TOKEN_PERIODIC=TOKEN)
        try:
            release = desired_release(django_user_model, replicate)
            held = DeploymentTarget.objects.filter(pk=release.target_id)
            held.update(lease_owner="another-worker", lease_until=timezone.now() + timezone.timedelta(minutes=5))
            log = tmp_path / "worker.log"
            busy = re.compile(r"reconcile_target\[[0-9a-f-]+\] succeeded in [0-9.]+s: 'busy'")
            processes.wait(lambda: len(busy.findall(log.read_text())) >= 2, 60, f"two busy runs\n{stack.logs()}")
            held.filter(lease_owner="another-worker").update(lease_owner="", lease_until=None)  # it lets go

            processes.wait(live(release), 60, f"release 1 to go live\n{stack.logs()}")
            assert replicate.releases_created == 1
            assert not re.search(r"reconcile_target\[[0-9a-f-]+\] retry", log.read_text()), stack.logs()
        finally:
            stop_stack(stack)
