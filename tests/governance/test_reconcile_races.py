"""The reconciler against an operator acting while a host call is under way (and against a target that
names the registry's own secret as its credential).

The reconciler calls hosts outside database transactions, so a rollback can land between what it read and
what it writes. The host is Replicate's wire-compatible local server (tests/fakes), driven by the real
adapter through the official client; the task runs in-process (`apply()`), and the server's `intercept`
hook is where the operator acts: on the server's thread, while the reconciler waits for the host's answer.
"""

import hashlib
import json
import socket
import time
from datetime import timedelta

import pytest
import time_machine
from django.db import connection, transaction
from django.db.models.functions import Now
from django.utils import timezone

from audit.models import AuditEvent
from governance import deployment, deployment_tasks
from governance.models import DeploymentTarget, Release
from registry.models import ModelVersion
from tests import processes
from tests.fakes.httpfake import Reply
from tests.fakes.replicate_server import ReplicateServer
from tests.governance.conftest import approved_release, create_target, register_second_version

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "r8_reconcile-races-token"  # noqa: S105 - the local server's test account
DEPLOYMENT = "/v1/deployments/acme/churn-rep"


def replicate_version(n: int) -> str:
    return hashlib.sha256(f"churn-{n}".encode()).hexdigest()


@pytest.fixture
def replicate(monkeypatch):
    monkeypatch.setenv("REPLICATE_TOKEN_RACES", TOKEN)
    with ReplicateServer(token=TOKEN, username="acme", seed=3) as server:
        for n in (1, 2, 3):
            server.add_version("acme/churn", replicate_version(n))
        yield server


@pytest.fixture
def rep(world, replicate):
    """Target `rep` (one reviewer approves) on the Replicate server; acme/churn v1 and v2, each with its
    Replicate version as host_revision."""
    created = create_target(
        world["admin"],
        name="rep",
        kind="replicate",
        stage="production",
        config={
            "owner": "acme",
            "deployment": "churn-rep",
            "model": "acme/churn",
            "base_url": replicate.url,
            "timeout_seconds": 5,
        },
        credentials_ref="env:REPLICATE_TOKEN_RACES",
        policy={"approvals_required": 1, "approver_groups": ["reviewers"]},
    )
    assert created.status_code == 201, created.json()
    register_second_version(world)
    for n in (1, 2):
        ModelVersion.objects.filter(number=n).update(tags={"host_revision": f"acme/churn:{replicate_version(n)}"})
    return DeploymentTarget.objects.get(name="rep")


def reconcile(target: DeploymentTarget) -> str:
    return deployment_tasks.reconcile_target.apply(args=(target.pk,)).get()


def roll_back(world, target: DeploymentTarget, **kwargs) -> None:
    """What the operator does from another connection (the intercept hook runs on the server's thread)."""
    try:
        deployment.deployment_rollback(actor=world["admin"].user, target=target, reason="p95 doubled", **kwargs)
    finally:
        connection.close()


def refused(replicate, detail: str):
    raise Reply(422, replicate.error_body(422, detail), {"Content-Type": "application/problem+json"})


def after(event: AuditEvent) -> dict:
    return json.loads(event.after)


def states(target: DeploymentTarget) -> dict[int, str]:
    return dict(target.releases.values_list("number", "state"))


def test_a_deploy_failing_after_a_rollback_does_not_fail_the_rollback(world, rep, replicate):
    """Release 2's deploy fails after the operator rolled back to release 1: release 1 must stay desired
    and untouched (the failure used to land on whatever was desired by then, release 1 included)."""
    approved_release(world, rep, 1)
    assert reconcile(rep) == "converged"
    approved_release(world, rep, 2)

    def rollback_then_refuse(method, path, body):
        if method == "PATCH" and path == DEPLOYMENT:
            replicate.intercept = None
            roll_back(world, rep)
            refused(replicate, "Version could not be pulled.")

    replicate.intercept = rollback_then_refuse
    assert reconcile(rep) == "failed"  # the task's outcome for release 2's non-retryable error
    rep.refresh_from_db()
    assert rep.desired_release.number == 1
    assert states(rep) == {1: "live", 2: "rolled_back"}  # release 1 never stopped serving
    assert not AuditEvent.objects.filter(action="release.failed").exists()
    assert reconcile(rep) == "converged"  # the host still serves version 1: nothing deployed, nothing recorded
    assert states(rep) == {1: "live", 2: "rolled_back"}
    assert AuditEvent.objects.filter(action="release.live").count() == 1
    assert [r["version"] for r in replicate.history[("acme", "churn-rep")]] == [replicate_version(1)]


def serving_record(release: Release) -> tuple:
    release.refresh_from_db()
    return release.state, release.live_at, list(release.serving_periods.values_list("started_at", "ended_at"))


def test_aborting_a_release_on_its_way_keeps_the_serving_one_live(world, rep, replicate):
    """Release 1 serves; release 2 is approved and the operator rolls back before it deployed: release 1 stays
    live with its serving period and live_at (the soak rule reads them), a newer approval does not supersede it
    while it serves, and that one failing falls back to it."""
    one = approved_release(world, rep, 1)
    assert reconcile(rep) == "converged"
    before = serving_record(one)
    approved_release(world, rep, 2)
    roll_back(world, rep)
    assert states(rep) == {1: "live", 2: "rolled_back"}
    assert serving_record(one) == before
    approved_release(world, rep, 2)  # approved again: release 3, while release 1 still serves
    assert states(rep) == {1: "live", 2: "rolled_back", 3: "pending"}
    replicate.intercept = lambda method, path, body: method == "PATCH" and refused(replicate, "Bad weights.")
    assert reconcile(rep) == "failed"
    rep.refresh_from_db()
    assert rep.desired_release == one and states(rep) == {1: "live", 2: "rolled_back", 3: "failed"}
    assert after(AuditEvent.objects.get(action="release.failed")) == {"target": "rep", "number": 3, "fallback": 1}
    assert serving_record(one) == before


def test_an_abort_after_the_host_took_the_deploy_restores_the_release_that_kept_serving(world, rep, replicate):
    """The operator rolls back while release 2's deploy call is under way and the host carries it out: the next
    reconcile finds the host on release 2's version, records the drift and deploys release 1 again, whose
    serving period (never closed by our records) goes on."""
    one = approved_release(world, rep, 1)
    assert reconcile(rep) == "converged"
    before = serving_record(one)
    approved_release(world, rep, 2)

    def rollback_during_the_deploy(method, path, body):
        if method == "PATCH" and path == DEPLOYMENT:
            replicate.intercept = None
            roll_back(world, rep)  # and the host goes on to carry the PATCH out

    replicate.intercept = rollback_during_the_deploy
    reconcile(rep)
    history = replicate.history[("acme", "churn-rep")]
    assert [r["version"] for r in history] == [replicate_version(1), replicate_version(2)]
    assert states(rep) == {1: "live", 2: "rolled_back"}
    assert reconcile(rep) == "converged"
    assert history[-1]["version"] == replicate_version(1)
    assert after(AuditEvent.objects.get(action="target.drift_detected"))["desired"] == 1
    assert serving_record(one) == before


def test_a_failed_rollback_does_not_fall_back_to_the_release_rolled_back_from(world, rep, replicate):
    approved_release(world, rep, 1)
    assert reconcile(rep) == "converged"
    approved_release(world, rep, 2)
    assert reconcile(rep) == "converged"
    roll_back(world, rep)
    replicate.intercept = lambda method, path, body: method == "PATCH" and refused(replicate, "Quota exceeded.")
    assert reconcile(rep) == "failed"
    rep.refresh_from_db()
    assert rep.desired_release is None  # the failure stays visible; release 2 is not quietly redeployed
    assert states(rep) == {1: "failed", 2: "rolled_back"}
    failed = AuditEvent.objects.get(action="release.failed")
    assert after(failed) == {"target": "rep", "number": 1, "fallback": None} and "Quota exceeded" in failed.reason


def test_a_failed_deploy_falls_back_to_the_release_that_still_serves(world, rep, replicate):
    approved_release(world, rep, 1)
    assert reconcile(rep) == "converged"
    approved_release(world, rep, 2)
    replicate.intercept = lambda method, path, body: method == "PATCH" and refused(replicate, "Bad weights.")
    assert reconcile(rep) == "failed"
    rep.refresh_from_db()
    assert rep.desired_release.number == 1
    assert states(rep) == {1: "live", 2: "failed"}
    assert after(AuditEvent.objects.get(action="release.failed")) == {"target": "rep", "number": 2, "fallback": 1}


def test_a_rollback_during_retries_gets_a_retry_budget_of_its_own(world, rep, replicate, settings):
    """Release 3's deploy fails with a retryable error and the operator rolls back to release 1 between two
    attempts: release 1 gets all RECONCILE_MAX_RETRIES retries of its own before it fails, not what release 3
    left of the chain's."""
    settings.RECONCILE_MAX_RETRIES = 2
    approved_release(world, rep, 1)
    assert reconcile(rep) == "converged"
    approved_release(world, rep, 2)
    assert reconcile(rep) == "converged"
    ModelVersion.objects.filter(number=2).update(tags={"host_revision": f"acme/churn:{replicate_version(3)}"})
    approved_release(world, rep, 2)  # release 3
    sent = []

    def unavailable(method, path, body):
        if method == "PATCH" and path == DEPLOYMENT:
            sent.append(body["version"])
            if len(sent) == 2:
                roll_back(world, rep, to_number=1)
            raise Reply(503, replicate.error_body(503, "Service unavailable."), {"Content-Type": "application/json"})

    replicate.intercept = unavailable
    assert reconcile(rep) == "failed"
    assert sent == [replicate_version(3)] * 2 + [replicate_version(1)] * 3  # release 1: first attempt + 2 retries
    assert states(rep) == {1: "failed", 2: "live", 3: "rolled_back"}  # release 2 never stopped serving


def test_a_drift_repair_does_not_redeploy_a_release_rolled_back_meanwhile(world, rep, replicate):
    """The host drifted from live release 2; while the reconciler reads the host, the operator rolls back
    to release 1. The repair must not send release 2 to the host, nor leave it deploying."""
    import replicate as replicate_client

    approved_release(world, rep, 1)
    assert reconcile(rep) == "converged"
    approved_release(world, rep, 2)
    assert reconcile(rep) == "converged"
    client = replicate_client.Client(api_token=TOKEN, base_url=replicate.url)
    client.deployments.update("acme", "churn-rep", version=replicate_version(3))  # changed outside the registry

    def rollback_while_reading(method, path, body):
        if method == "GET" and path == DEPLOYMENT:
            replicate.intercept = None
            roll_back(world, rep)

    replicate.intercept = rollback_while_reading
    assert reconcile(rep) == "idle"
    assert states(rep) == {1: "pending", 2: "rolled_back"}
    assert not AuditEvent.objects.filter(action="target.drift_detected").exists()
    history = [r["version"] for r in replicate.history[("acme", "churn-rep")]]
    assert history == [replicate_version(n) for n in (1, 2, 3)]  # nothing sent for release 2
    assert reconcile(rep) == "converged"  # the rollback's own reconcile deploys release 1
    assert states(rep) == {1: "live", 2: "rolled_back"}
    assert replicate.history[("acme", "churn-rep")][-1]["version"] == replicate_version(1)


def test_a_drift_repair_records_the_drift_and_redeploys(world, rep, replicate):
    import replicate as replicate_client

    approved_release(world, rep, 1)
    assert reconcile(rep) == "converged"
    client = replicate_client.Client(api_token=TOKEN, base_url=replicate.url)
    client.deployments.update("acme", "churn-rep", version=replicate_version(3))
    assert reconcile(rep) == "converged"
    assert states(rep) == {1: "live"}
    drift = after(AuditEvent.objects.get(action="target.drift_detected"))
    assert drift == {"desired": 1, "host_serving": None, "host_state": "ready"}
    assert replicate.history[("acme", "churn-rep")][-1]["version"] == replicate_version(1)


def stored_version(number: int, files: dict[str, bytes], *, store: bool = True) -> ModelVersion:
    """A registry-stored version of acme/churn with these files (put in the blob store unless store=False);
    made with the ORM, so a manifest registration would now refuse can be made too."""
    from registry.storage import blob_store
    from tests.registry.helpers import file_entry

    for content in files.values() if store else ():
        blob_store().put([content], expected_sha256=hashlib.sha256(content).hexdigest(), expected_size=len(content))
    return ModelVersion.objects.create(
        model=ModelVersion.objects.get(number=1).model,
        number=number,
        digest="sha256:" + hashlib.sha256(repr(sorted(files)).encode() + bytes(number)).hexdigest(),
        artifact_uri=f"registry://acme/churn/{number}",
        manifest={"files": [file_entry(path, content) for path, content in files.items()]},
    )


def test_a_release_folder_is_reused_only_for_the_same_version(world, settings, tmp_path):
    """After a database restore, release 1 may be another version than the folder on disk holds: the marker
    beside the folder names the digest, and a folder for another digest is copied afresh. A manifest file
    named like the marker is the model's own."""
    settings.DATA_DIR = tmp_path / "data"
    target = DeploymentTarget.objects.get(name="prod")
    old = stored_version(2, {"model.bin": b"OLD MODEL"})
    path = deployment.materialize(Release.objects.create(target=target, version=old, number=1))
    assert (tmp_path / "data/releases/prod/1/model.bin").read_bytes() == b"OLD MODEL"
    Release.objects.filter(target=target).delete()  # the restored database has another release 1
    new = stored_version(3, {"model.bin": b"NEW MODEL", ".complete": b"the model's own file"})
    assert deployment.materialize(Release.objects.create(target=target, version=new, number=1)) == path
    assert (tmp_path / "data/releases/prod/1/model.bin").read_bytes() == b"NEW MODEL"
    assert (tmp_path / "data/releases/prod/1/.complete").read_bytes() == b"the model's own file"
    assert (tmp_path / "data/releases/prod/1.complete").read_text() == new.digest


def test_copies_of_releases_no_longer_run_are_pruned(world, settings, tmp_path):
    """The desired and last good releases and the keep_previous (default 2) most recently served others keep
    their copies; older ones are deleted, marker first, so a rollback to them copies again; so are half-done
    copies."""
    from datetime import timedelta

    from django.utils import timezone

    from governance.models import ServingPeriod

    settings.DATA_DIR = tmp_path / "data"
    target = DeploymentTarget.objects.get(name="prod")
    version = stored_version(2, {"model.bin": b"weights"})
    releases = {n: Release.objects.create(target=target, version=version, number=n) for n in range(1, 6)}
    for release in releases.values():
        deployment.materialize(release)
    start = timezone.now() - timedelta(hours=5)
    for n in (1, 2, 3, 4):  # served in turn; release 5 is being deployed
        ServingPeriod.objects.create(target=target, release=releases[n], started_at=start + timedelta(hours=n))
    DeploymentTarget.objects.filter(pk=target.pk).update(desired_release=releases[5], last_good_release=releases[4])
    target.refresh_from_db()
    folders = tmp_path / "data/releases/prod"
    (folders / f"5.{'0' * 32}.tmp").mkdir()  # a copy a reconcile killed at its hard time limit left half done
    assert deployment.prune_release_copies(target) == [1]
    assert sorted(p.name for p in folders.iterdir()) == [
        "2",
        "2.complete",
        "3",
        "3.complete",
        "4",
        "4.complete",
        "5",
        "5.complete",
    ]
    DeploymentTarget.objects.filter(pk=target.pk).update(config={"keep_previous": 0})
    target.refresh_from_db()
    assert deployment.prune_release_copies(target) == [2, 3]
    assert deployment.materialize(releases[1]) and (folders / "1/model.bin").read_bytes() == b"weights"


def test_files_a_file_system_cannot_hold_fail_the_release_not_the_task(world, settings, tmp_path):
    """A stored manifest holding 'weights' and 'weights/part1' (registration refuses it now): the copy fails
    with a permanent host error naming the release, not an OSError that left it deploying."""
    settings.DATA_DIR = tmp_path / "data"
    clash = stored_version(2, {"weights": b"a", "weights/part1": b"b"})
    release = Release.objects.create(target=DeploymentTarget.objects.get(name="prod"), version=clash, number=1)
    with pytest.raises(deployment.HostError, match="could not copy release 1's files") as raised:
        deployment.materialize(release)
    assert raised.value.retryable is False
    assert not (tmp_path / "data/releases/prod/1").exists()
    assert list((tmp_path / "data/releases/prod").iterdir()) == []  # no staging folder left


def test_a_stored_artifact_gone_missing_fails_the_release_with_the_reason(world, settings, tmp_path):
    """A self-hosted release copies registry-stored files; a blob missing from the store is a host error
    that fails the release (it was an unhandled FileNotFoundError: the release stayed deploying)."""
    from tests.registry.helpers import file_entry

    settings.DATA_DIR = tmp_path / "data"
    manifest = {"files": [file_entry("model.bin", b"never uploaded")]}
    version = ModelVersion.objects.create(
        model=ModelVersion.objects.get(number=1).model,
        number=2,
        digest="sha256:" + "ab" * 32,
        artifact_uri="registry://acme/churn/2",
        manifest=manifest,
    )
    release = Release.objects.create(target=DeploymentTarget.objects.get(name="prod"), version=version, number=1)
    with pytest.raises(deployment.HostError, match="model.bin .* is missing from the artifact store") as raised:
        deployment.materialize(release)
    assert raised.value.retryable is False
    assert not (tmp_path / "data" / "releases" / "prod" / "1").exists()


def test_a_target_naming_the_registrys_own_secret_gets_nothing_sent(world, rep, replicate, settings):
    """A target stored before credentials_ref refused the registry's own variables: the worker refuses to
    resolve it, the release fails with the reason, and the host never sees the secret."""
    DeploymentTarget.objects.filter(pk=rep.pk).update(credentials_ref="env:SECRET_KEY")
    approved_release(world, rep, 1)
    assert reconcile(rep) == "failed"
    rep.refresh_from_db()
    assert states(rep) == {1: "failed"} and rep.desired_release is None
    assert "registry's own configuration" in AuditEvent.objects.get(action="release.failed").reason
    assert replicate.requests == []


def test_a_host_call_longer_than_the_lease_keeps_the_target_claimed(world, rep, replicate, settings):
    """The claim is renewed while a reconcile runs, so a second worker does not deploy beside a slow first."""
    settings.RECONCILE_LEASE_SECONDS = 1
    approved_release(world, rep, 1)
    outcome = {}

    def slow_create(method, path, body):
        if method == "POST" and path == "/v1/deployments":
            replicate.intercept = None
            time.sleep(2.5)  # two and a half leases
            try:
                outcome["second worker"] = deployment.reconcile(rep.pk, owner="second-worker")
            finally:
                connection.close()

    replicate.intercept = slow_create
    assert reconcile(rep) == "converged"
    assert outcome == {"second worker": "busy"}
    assert replicate.releases_created == 1
    rep.refresh_from_db()
    assert (rep.lease_owner, rep.lease_until) == ("", None)  # released when done


def test_a_hung_reconcile_stops_holding_the_target(world, rep, replicate, settings, caplog):
    """Past RECONCILE_MAX_HOLD_SECONDS the claim is no longer renewed: a worker stuck in a host call does not
    lock the target (and its rollbacks) out for good."""
    settings.RECONCILE_LEASE_SECONDS, settings.RECONCILE_MAX_HOLD_SECONDS = 1, 1
    approved_release(world, rep, 1)
    outcome = {}

    def stuck_create(method, path, body):
        if method == "POST" and path == "/v1/deployments":
            replicate.intercept = None
            time.sleep(3)  # past the hold (1 s) and the lease after it (1 s)
            try:
                outcome["second worker"] = deployment.reconcile(rep.pk, owner="second-worker")
            finally:
                connection.close()

    replicate.intercept = stuck_create
    reconcile(rep)
    assert outcome == {"second worker": "converged"}
    assert "is no longer renewed" in caplog.text


RENEWAL = 'UPDATE "governance_deploymenttarget" SET "lease_until"%'


def renewing_backend(seconds: float = 3.0) -> int:
    """The PostgreSQL backend of the claim's renewing thread (its last statement was a renewal), once it renewed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND query LIKE %s",
                [RENEWAL],
            )
            pids = [row[0] for row in cursor.fetchall()]
        if pids:
            assert len(pids) == 1, pids
            return pids[0]
        time.sleep(0.05)
    raise AssertionError("the claim was never renewed")


def take_claim(target: DeploymentTarget, owner: str) -> None:
    """What a second worker's claim does once it finds the first one's lease run out."""
    DeploymentTarget.objects.filter(pk=target.pk).update(lease_owner=owner, lease_until=Now() + timedelta(minutes=5))


def actions_since(seq: int) -> list[str]:
    return list(AuditEvent.objects.filter(seq__gt=seq).order_by("seq").values_list("action", flat=True))


def test_a_renewal_that_fails_once_is_retried_and_the_target_stays_claimed(world, rep, replicate, settings, caplog):
    """A transient database error (here the renewing connection is terminated, as a failover or a reset does) ended
    the renewals for good: the claim ran out under a slow host call and a second worker deployed beside the first.
    The renewal is retried on a fresh connection instead."""
    settings.RECONCILE_LEASE_SECONDS = 3
    approved_release(world, rep, 1)
    outcome = {}

    def connection_lost_during_the_create(method, path, body):
        if method == "POST" and path == "/v1/deployments":
            replicate.intercept = None
            try:
                terminated = renewing_backend()
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_terminate_backend(%s)", [terminated])
                processes.wait(lambda: "could not renew the claim on target" in caplog.text, 10, "a failed renewal")
                # then one on a fresh connection (no sleep standing for it: a loaded machine delays the thread)
                processes.wait(lambda: renewing_backend() != terminated, 10, "a renewal on a fresh connection")
                outcome["second worker"] = deployment.reconcile(rep.pk, owner="second-worker")
            finally:
                connection.close()

    replicate.intercept = connection_lost_during_the_create
    assert reconcile(rep) == "converged"
    assert outcome == {"second worker": "busy"}
    assert replicate.releases_created == 1
    assert "could not renew the claim on target" in caplog.text
    rep.refresh_from_db()
    assert (rep.lease_owner, rep.lease_until) == ("", None)


def test_a_reconcile_whose_claim_was_taken_records_nothing_after_its_host_call(world, rep, replicate, settings, caplog):
    """Another worker holds the target by the time the host answers: the first records nothing (no host release id,
    no `release.live`), leaves the other's claim alone and says why; it is the other worker's target now."""
    settings.RECONCILE_LEASE_SECONDS = 1
    release = approved_release(world, rep, 1)
    before = AuditEvent.objects.latest("seq").seq

    def claim_taken_during_the_create(method, path, body):
        if method == "POST" and path == "/v1/deployments":
            replicate.intercept = None
            try:
                take_claim(rep, "second-worker:0")
                # the renewal, every third of a lease, finds another owner
                processes.wait(lambda: "another worker took its claim" in caplog.text, 10, "the renewal to notice")
            finally:
                connection.close()

    replicate.intercept = claim_taken_during_the_create
    assert deployment.reconcile(rep.pk, owner="first-worker") == "lease_lost"
    assert replicate.releases_created == 1  # the host call was under way when the claim was taken
    release.refresh_from_db()
    assert (release.state, release.host_release_id, release.live_at) == ("deploying", "", None)
    assert actions_since(before) == ["release.started"]  # written before the host call; nothing after it
    rep.refresh_from_db()
    assert (rep.lease_owner, rep.last_good_release) == ("second-worker:0", None)
    assert "another worker took its claim on the target" in caplog.text
    assert "stopped without recording anything for release 1" in caplog.text

    DeploymentTarget.objects.filter(pk=rep.pk).update(lease_owner="", lease_until=None)  # the other worker is done
    assert reconcile(rep) == "converged"
    assert replicate.releases_created == 1 and states(rep) == {1: "live"}


def test_a_claim_that_ran_out_while_its_renewal_waited_stops_the_reconcile(world, rep, replicate, settings, caplog):
    """The renewal cannot get through (a lock held on the target row, as a stalled database holds it) until the
    lease has run out: the reconcile does not write once the host answers, however the renewal ends; the task looks
    again and converges without a second host release."""
    settings.RECONCILE_LEASE_SECONDS = 1
    release = approved_release(world, rep, 1)

    def renewal_blocked_during_the_create(method, path, body):
        if method == "POST" and path == "/v1/deployments":
            replicate.intercept = None
            try:
                renewing_backend()
                with transaction.atomic():
                    list(DeploymentTarget.objects.select_for_update().filter(pk=rep.pk))
                    time.sleep(1.5)  # a lease and a half
            finally:
                connection.close()

    replicate.intercept = renewal_blocked_during_the_create
    assert reconcile(rep) == "converged"  # the task's second run
    assert "ran out before it could be renewed" in caplog.text
    assert "stopped without recording anything for release 1" in caplog.text
    release.refresh_from_db()
    assert release.state == "live" and release.host_release_id.partition("@")[0] == "1"
    assert replicate.releases_created == 1
    assert AuditEvent.objects.filter(action="release.live").count() == 1


def test_an_unexpected_error_is_retried_then_fails_the_release_with_a_reason(world, rep, replicate, settings):
    """Anything but a host error escaped the task: the release stayed `deploying` with no reason, re-polled
    for good, and no deadline applied. Here a version stored before manifests were checked (no "files")."""
    settings.RECONCILE_MAX_RETRIES = 1
    ModelVersion.objects.create(
        model=ModelVersion.objects.get(number=1).model,
        number=3,
        digest="sha256:" + "cd" * 32,
        artifact_uri="s3://bucket/legacy",
        manifest={},
        tags={"host_revision": f"acme/churn:{replicate_version(3)}"},
    )
    release = approved_release(world, rep, 3)
    assert deployment_tasks.reconcile_target.apply(args=(rep.pk,)).get() == "failed"
    release.refresh_from_db()
    assert release.state == "failed"
    assert release.reason.endswith("unexpected KeyError while converging (the worker's log has the details)")
    assert replicate.releases_created == 0


def test_an_artifact_store_outage_is_a_retryable_host_error(world, settings, tmp_path, monkeypatch):
    """S3 unreachable while a self-hosted release copies its files: botocore's errors are no OSError, and
    escaped the task (a retryable host error now, so bounded retries end in a failed release with why)."""
    from registry.storage import blob_store

    settings.DATA_DIR = tmp_path / "data"
    version = stored_version(2, {"model.bin": b"weights"})
    release = Release.objects.create(target=DeploymentTarget.objects.get(name="prod"), version=version, number=1)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "outage-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "outage-test-secret")
    settings.ARTIFACT_STORAGE, settings.S3_BUCKET = "s3", "artifacts"
    settings.S3_ENDPOINT_URL = f"http://127.0.0.1:{port}"
    blob_store.cache_clear()
    try:
        with pytest.raises(deployment.HostError, match="could not read the artifact store: EndpointConnectionError"):
            deployment.materialize(release)
    finally:
        blob_store.cache_clear()
    assert not (tmp_path / "data/releases/prod/1").exists()


def test_a_worker_whose_clock_runs_ahead_does_not_take_a_lease_still_held(world, rep, replicate):
    """Leases are compared with the database's clock. A worker ten minutes ahead of it saw another worker's
    five-minute lease as run out, claimed the target and deployed beside that worker."""
    approved_release(world, rep, 1)
    DeploymentTarget.objects.filter(pk=rep.pk).update(
        lease_owner="first-worker", lease_until=Now() + timedelta(minutes=5)
    )
    with time_machine.travel(timezone.now() + timedelta(minutes=10)):
        assert deployment.reconcile(rep.pk, owner="fast-clock-worker") == "busy"
    assert replicate.releases_created == 0
    rep.refresh_from_db()
    assert rep.lease_owner == "first-worker"

    # Once the lease has run out by the database's clock, the same worker takes the target and converges it.
    DeploymentTarget.objects.filter(pk=rep.pk).update(lease_until=Now() - timedelta(seconds=1))
    with time_machine.travel(timezone.now() + timedelta(minutes=10)):
        assert deployment.reconcile(rep.pk, owner="fast-clock-worker") == "converged"
    assert replicate.releases_created == 1


def test_a_task_handed_out_again_while_it_runs_does_not_deploy_beside_itself(world, rep, replicate):
    """The broker hands a message out again while its first delivery still runs (Redis's visibility timeout
    ran out, or the worker's connection dropped): the second run has the same task id. The lease was held by
    task id, so the second run took it and created a second deployment beside the first."""
    approved_release(world, rep, 1)
    outcome = {}

    def redelivered(method, path, body):
        if method == "POST" and path == "/v1/deployments":
            replicate.intercept = None
            try:
                outcome["same task again"] = deployment.reconcile(rep.pk, owner="task-1")
            finally:
                connection.close()

    replicate.intercept = redelivered
    assert deployment.reconcile(rep.pk, owner="task-1") == "converged"
    assert outcome == {"same task again": "busy"}
    assert replicate.releases_created == 1


def test_what_a_release_deploys_is_fixed_when_its_promotion_is_requested(world, rep, replicate):
    """The Replicate version comes from the version's `host_revision` tag, which stays editable. It was read
    at each deploy: after the approval the owner could point the release (and any later rollback to it) at
    another Replicate version than the one the reviewers approved."""
    release = approved_release(world, rep, 1)
    approved = f"acme/churn:{replicate_version(1)}"
    assert release.host_revision == approved
    changed = (
        world["owner"]
        .client()
        .patch(
            "/api/v1/models/acme/churn/versions/1",
            {"tags": {"host_revision": f"acme/churn:{replicate_version(3)}"}},
            format="json",
        )
    )
    assert changed.status_code == 200, changed.json()
    assert reconcile(rep) == "converged"
    assert replicate.deployment("acme", "churn-rep")["current_release"]["version"] == replicate_version(1)

    shown = world["admin"].client().get(f"/api/v1/promotions/{release.promotion_id}").json()
    assert shown["host_revision"] == approved
    listed = world["admin"].client().get("/api/v1/targets/rep/releases").json()["results"]
    assert [(r["number"], r["host_revision"]) for r in listed] == [(1, approved)]


def test_a_tag_cannot_override_the_revision_an_artifact_uri_pins(world):
    """`hf://org/repo@<commit>` is part of the immutable version; a `host_revision` tag may name a revision only
    for versions whose URI pins none; a registry:// URI's "@" part is a digest, never a revision."""
    version = ModelVersion.objects.get(number=1)
    version.artifact_uri, version.tags = "hf://acme/churn@" + "a" * 40, {"host_revision": "b" * 40}
    assert deployment.host_revision_of(version) == "a" * 40
    for other in (
        "s3://bucket/churn@sha256:" + "c" * 64,  # a content digest, not a host revision
        "registry://acme/other@main",  # stored before registration made registry:// URIs canonical
        "registry://acme/churn@" + version.digest,
        "hf://acme/churn",  # pins nothing (stored before hf:// URIs had to pin a commit)
    ):
        version.artifact_uri = other
        assert deployment.host_revision_of(version) == "b" * 40, other
    version.artifact_uri = "s3://bucket/churn@r2"  # documented: any other scheme's `@<revision>` pins it
    assert deployment.host_revision_of(version) == "r2"
