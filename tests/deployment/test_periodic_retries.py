"""A reconcile sent by the periodic run is skipped if it waits too long in the queue, but its retries are not: a
retry keeps its message's options, and every poll due after the periodic run's expiry was thrown away as
revoked (a target whose host failed was never failed; one held by another worker was never converged).
The periodic run sends it with a max age (config/celery.py), as here.
Real Redis and Celery worker, Replicate's wire-compatible server."""

import hashlib

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


def test_retries_of_a_periodic_reconcile_outlive_its_expiry(users, tmp_path, django_user_model):
    with ReplicateServer(token=TOKEN, username="acme") as replicate:
        replicate.add_version("acme/churn", VERSION)
        stack = make_stack(users, tmp_path, beat=False, REPLICATE_TOKEN_PERIODIC=TOKEN)
        try:
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
            release = Release.objects.create(
                target=target, version=version, number=1, host_revision=f"acme/churn:{VERSION}"
            )
            # Another worker holds the target for 10 s more: the reconcile polls ("busy") once a second meanwhile,
            # past the first run's max age of 4 s.
            DeploymentTarget.objects.filter(pk=target.pk).update(
                desired_release=release,
                lease_owner="another-worker",
                lease_until=timezone.now() + timezone.timedelta(seconds=10),
            )
            from config.celery import MAX_AGE_HEADER, app

            with app.connection_for_write(stack.redis.url) as connection:
                deployment_tasks.reconcile_target.apply_async(
                    (target.pk,), headers={MAX_AGE_HEADER: 4}, connection=connection
                )

            def live():
                release.refresh_from_db()
                return release.state == "live"

            processes.wait(live, 40, f"release 1 to go live\n{stack.logs()}")
            assert replicate.releases_created == 1
            log = (tmp_path / "worker.log").read_text()
            assert "Discarding revoked task" not in log
            assert "skipping governance.deployment_tasks.reconcile_target" not in log
        finally:
            stop_stack(stack)
