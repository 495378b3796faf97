"""A reconcile whose host call hangs is stopped at its time limit and leaves one truth: the release failed with the
reason, the target's claim released, the last good release desired again and serving. Without time limits the call
held a worker process for as long as the host kept it. Real Redis, a prefork Celery worker (the pool that enforces
time limits), Replicate's wire-compatible server driven through the official client."""

import hashlib
import subprocess
import sys
import threading
import time

import pytest

from audit.models import AuditEvent
from governance.models import DeploymentTarget, Release
from registry.models import ModelVersion
from registry.services import model_create
from tests import processes
from tests.celery_limits.conftest import start_worker
from tests.fakes.httpfake import Reply
from tests.fakes.replicate_server import ReplicateServer

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TOKEN = "r8_time-limits-token"  # noqa: S105 - the local server's test account
HOLD = 3  # RECONCILE_MAX_HOLD_SECONDS: the soft limit; the hard one is a third of a lease (2 s) later
ENQUEUE = "import django; django.setup(); from governance import deployment_tasks as t; t.reconcile_target.delay({})"


def version(model, number: int) -> tuple[ModelVersion, str]:
    digest = hashlib.sha256(f"limits-{number}".encode()).hexdigest()
    return ModelVersion.objects.create(
        model=model,
        number=number,
        digest=f"sha256:{digest}",
        artifact_uri=f"s3://bucket/churn/{number}",
        manifest={"files": []},
        tags={"host_revision": f"acme/churn:{digest}"},
    ), digest


def test_a_reconcile_whose_host_call_hangs_stops_at_its_time_limit(redis, tmp_path, django_user_model):
    released = threading.Event()

    def hang_on_update(method, path, body):
        if method == "PATCH":  # release 2's deploy: the platform never answers (until the test ends)
            released.wait(60)
            raise Reply(503, {"detail": "gave up"})

    with ReplicateServer(token=TOKEN, username="acme") as replicate:
        replicate.intercept = hang_on_update
        owner = django_user_model.objects.create_user(username="owner", password="pw-owner-123456")
        model = model_create(actor=owner, namespace="acme", name="churn")
        (v1, digest1), (v2, digest2) = version(model, 1), version(model, 2)
        replicate.add_version("acme/churn", digest1)
        replicate.add_version("acme/churn", digest2)
        target = DeploymentTarget.objects.create(
            name="rep",
            kind="replicate",
            stage="production",
            config={
                "owner": "acme",
                "deployment": "churn",
                "model": "acme/churn",
                "base_url": replicate.url,
                "timeout_seconds": 120,  # the client would wait this long for the hung call
            },
            credentials_ref="env:REPLICATE_TOKEN_LIMITS",
        )
        first = Release.objects.create(target=target, version=v1, number=1, host_revision=v1.tags["host_revision"])
        DeploymentTarget.objects.filter(pk=target.pk).update(desired_release=first)

        env = processes.service_env(
            redis.url,
            REPLICATE_TOKEN_LIMITS=TOKEN,
            RECONCILE_MAX_HOLD_SECONDS=str(HOLD),
            RECONCILE_LEASE_SECONDS="6",
        )
        log = tmp_path / "worker.log"
        worker = start_worker(env, log, "-P", "prefork", "-c", "1", "-n", f"limits-{redis.port}@%h")

        def reconcile():
            """Enqueued by a process configured like the worker, as the web's are: Celery sends the publisher's
            time limits with the message."""
            enqueue = ENQUEUE.format(target.pk)
            subprocess.run([sys.executable, "-c", enqueue], cwd=processes.BASE_DIR, env=env, check=True, timeout=60)

        def state(release):
            release.refresh_from_db()
            return release.state

        try:
            reconcile()
            processes.wait(lambda: state(first) == "live", 30, f"release 1 to go live\n{processes.tail(log)}")

            second = Release.objects.create(target=target, version=v2, number=2, host_revision=v2.tags["host_revision"])
            DeploymentTarget.objects.filter(pk=target.pk).update(desired_release=second)
            started = time.monotonic()
            reconcile()
            processes.wait(lambda: state(second) == "failed", 20, f"release 2 to fail\n{processes.tail(log)}")
            assert time.monotonic() - started < HOLD + 5  # stopped at the soft limit, not when the host gave up
            assert f"Soft time limit ({HOLD}s) exceeded" in log.read_text()
            assert "RECONCILE_MAX_HOLD_SECONDS" in second.reason
            assert second.ended_at is not None
            event = AuditEvent.objects.get(action="release.failed")
            assert event.subject_id == str(second.pk) and "RECONCILE_MAX_HOLD_SECONDS" in event.reason

            # The last good release is the desired one again. It is reconciled by the same worker (its process was
            # not lost) at once: the stopped run released its claim (else the next one finds the target busy and
            # polls until the claim runs out). It still serves, and the host was asked to deploy 2 only once.
            target.refresh_from_db()
            assert target.desired_release_id == first.pk
            reconciled_again = lambda: log.read_text().count("succeeded in") == 3  # noqa: E731 - 1, 2 (failed), 1
            processes.wait(reconciled_again, 15, f"release 1 to be reconciled again\n{processes.tail(log)}")
            assert log.read_text().count("'converged'") == 2 and "Retry in" not in log.read_text()
            target.refresh_from_db()
            assert (target.lease_owner, target.lease_until) == ("", None)
            assert state(first) == "live"
            assert replicate.deployment("acme", "churn")["current_release"]["number"] == 1
            assert [r["method"] for r in replicate.requests].count("PATCH") == 1
            assert "Hard time limit" not in log.read_text()
        finally:
            released.set()
            processes.stop(worker)
