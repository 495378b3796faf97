"""Fault injection on the deployment engine: a worker killed with SIGKILL, hosts that fail or hang.

Targets are Replicate deployments on the local wire-compatible server (tests/fakes), driven by the
worker through the official `replicate` client; it keeps every release each deployment ever had, so
"no duplicate host release" is read from the host's own history.
"""

import hashlib
import random
import signal
import threading
import time

import pytest
from django.core.management import call_command

from audit.models import AuditEvent
from governance.choices import ReleaseState
from governance.models import DeploymentTarget, Release
from tests import processes
from tests.deployment.conftest import make_stack, stop_stack
from tests.fakes.replicate_server import ReplicateServer

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

REPLICATE_TOKEN = "r8_e2e-fault-token"  # noqa: S105 - the local server's test account
ACCOUNT = "acme"
MODEL = "acme/clf"


def version_hash(n: int) -> str:
    return hashlib.sha256(f"replicate-version-{n}".encode()).hexdigest()


@pytest.fixture
def replicate():
    server = ReplicateServer(token=REPLICATE_TOKEN, username=ACCOUNT, seed=11).start()
    try:
        yield server
    finally:
        server.stop()


def build(users, tmp_path, replicate, *, targets: int, versions: int, **settings_env):
    """A stack, `targets` Replicate targets (1 approval by reviewers) and `versions` registered versions."""
    stack = make_stack(users, tmp_path, REPLICATE_API_TOKEN_E2E=REPLICATE_TOKEN, **settings_env)
    with stack.api("owner") as owner, stack.api("admin") as admin:
        assert owner.post("/models/", json={"namespace": "acme", "name": "clf"}).status_code == 201
        for n in range(1, versions + 1):
            replicate.add_version(MODEL, version_hash(n))
            registered = owner.post(
                "/models/acme/clf/versions/",
                json={
                    "artifact_uri": f"s3://acme-models/clf/{n}",
                    "manifest": {"files": [{"path": "model.bin", "size": n, "sha256": f"{n:064x}"}]},
                    "tags": {"host_revision": f"{MODEL}:{version_hash(n)}"},
                },
            )
            assert registered.status_code == 201, registered.text
        for t in range(targets):
            created = admin.post(
                "/targets/",
                json={
                    "name": f"rep-{t}",
                    "kind": "replicate",
                    "stage": "production",
                    "config": {
                        "owner": ACCOUNT,
                        "deployment": f"clf-{t}",
                        "model": MODEL,
                        "base_url": replicate.url,
                        "timeout_seconds": 1,
                    },
                    "credentials_ref": "env:REPLICATE_API_TOKEN_E2E",
                    "policy": {"approvals_required": 1, "approver_groups": ["reviewers"]},
                },
            )
            assert created.status_code == 201, created.text
    return stack


def promote(stack, target: str, version: int) -> None:
    with stack.api("owner") as owner, stack.api("reviewer") as reviewer:
        created = owner.post("/promotions/", json={"model": MODEL, "version": version, "target": target})
        assert created.status_code == 201, created.text
        approved = reviewer.post(f"/promotions/{created.json()['id']}/approve", json={})
        assert approved.status_code == 200 and approved.json()["state"] == "approved", approved.text


def settled(target: DeploymentTarget) -> bool:
    target.refresh_from_db()
    release = target.desired_release
    return release is not None and release.state in (ReleaseState.LIVE, ReleaseState.FAILED)


def host_versions(replicate, t: int) -> list[str]:
    return [r["version"] for r in replicate.history.get((ACCOUNT, f"clf-{t}"), [])]


def assert_chain_intact() -> None:
    call_command("audit_verify")  # raises CommandError naming the first bad sequence number


class Killer(threading.Thread):
    """SIGKILLs the worker at random moments (0.3–2.5 s apart) and starts a fresh one right away."""

    def __init__(self, stack):
        super().__init__(daemon=True)
        self.stack, self.kills, self.done = stack, 0, threading.Event()
        self.rng = random.Random(7)  # noqa: S311 - reproducible test schedule

    def run(self):
        while not self.done.wait(self.rng.uniform(0.3, 2.5)):
            self.stack.worker.send_signal(signal.SIGKILL)
            self.stack.worker.wait(10)
            self.kills += 1
            self.stack.start_worker()


def test_worker_killed_at_random_during_50_promotions_every_target_converges(users, tmp_path, replicate):
    stack = build(users, tmp_path, replicate, targets=5, versions=10)
    try:
        killer = Killer(stack)
        killer.start()
        plan = [(f"rep-{i % 5}", i // 5 + 1) for i in range(50)]  # each target: versions 1..10 in turn
        for target, version in plan:
            promote(stack, target, version)
            time.sleep(random.uniform(0, 0.3))  # noqa: S311 - spread the promotions over the kills
        killer.done.set()
        killer.join(15)
        last_kill = time.monotonic()
        assert killer.kills >= 5, killer.kills

        targets = list(DeploymentTarget.objects.order_by("name"))
        # Converged within one lease (a killed worker's claim) plus two reconcile intervals of the last kill.
        bound = 6 + 2 * 2 + 10  # seconds; 10 for a fresh worker to boot on a busy 2-core machine
        try:
            processes.wait(lambda: all(settled(t) for t in targets), bound, "every target to settle", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stack.logs()}") from None
        assert time.monotonic() - last_kill < bound + 1
    finally:
        stop_stack(stack)

    for t, target in enumerate(targets):
        target.refresh_from_db()
        desired = target.desired_release
        assert desired.version.number == 10 and desired.state == ReleaseState.LIVE, (target.name, desired.state)
        assert target.last_good_release_id == desired.pk
        served = host_versions(replicate, t)
        assert served[-1] == version_hash(10)  # the host serves what the registry says is live
        # No duplicate host release: the host never re-deployed the version it was already serving.
        assert all(a != b for a, b in zip(served, served[1:], strict=False)), served
        assert len(served) <= 10
    assert not Release.objects.filter(state__in=(ReleaseState.PENDING, ReleaseState.DEPLOYING)).exists()
    assert Release.objects.filter(state=ReleaseState.LIVE).count() == 5
    assert_chain_intact()


def test_hosts_failing_30_percent_retry_boundedly_then_converge_or_fail_with_a_reason(users, tmp_path, replicate):
    stack = build(users, tmp_path, replicate, targets=4, versions=3, RECONCILE_MAX_RETRIES="3")
    try:
        # rep-0..2 face a flaky platform (15% 503, 15% hanging past the client timeout); rep-3 a broken one.
        for target in ("rep-0", "rep-1", "rep-2", "rep-3"):
            promote(stack, target, 1)
        targets = list(DeploymentTarget.objects.order_by("name"))
        processes.wait(lambda: all(settled(t) for t in targets), 60, "first releases", interval=0.5)
        replicate.faults(fail_rate=0.15, timeout_rate=0.15, fault_sleep=1.5, seed=3)
        for version in (2, 3):
            for target in ("rep-0", "rep-1", "rep-2"):
                promote(stack, target, version)
        # rep-3's deployment answers every request with a 503 from now on.
        broken = f"/v1/deployments/{ACCOUNT}/clf-3"
        flaky_route = replicate.route

        def route(method, path, body, headers):
            if path.rstrip("/") == broken:
                replicate.fail(503, "The deployment's region is unavailable.")
            return flaky_route(method, path, body, headers)

        replicate.route = route
        requests_before, started = len(replicate.requests), time.monotonic()
        promote(stack, "rep-3", 2)
        try:
            processes.wait(lambda: all(settled(t) for t in targets), 120, "every target to settle", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stack.logs()}") from None
        elapsed = time.monotonic() - started
        broken_calls = [r for r in replicate.requests[requests_before:] if r["path"].rstrip("/") == broken]
    finally:
        stop_stack(stack)

    assert replicate.faults_injected["fail"] + replicate.faults_injected["timeout"] > 0
    # Bounded: each reconcile (the approval's, and one per periodic tick) makes at most 1 + RECONCILE_MAX_RETRIES
    # attempts of at most 2 requests (the client's own retry), with backoff in between: no retry storm.
    reconciles = 1 + elapsed / 2
    assert 0 < len(broken_calls) <= reconciles * (1 + 3) * 2, (len(broken_calls), elapsed)

    failed = AuditEvent.objects.filter(action="release.failed")
    for target in targets:
        target.refresh_from_db()
        release = Release.objects.filter(target=target).order_by("-number").first()
        if release.state == ReleaseState.FAILED:
            event = failed.get(subject_id=str(release.pk))
            assert "503" in event.reason or "timed out" in event.reason, event.reason
            # Traffic fell back to the last good release, which the host still serves.
            assert target.desired_release == target.last_good_release
            assert target.desired_release.state == ReleaseState.LIVE
        else:
            assert release.state == ReleaseState.LIVE and target.desired_release == release
    rep3 = Release.objects.get(target__name="rep-3", number=2)
    assert rep3.state == ReleaseState.FAILED  # the reason is the last error: the 503's detail or a timeout
    assert "503: The deployment's region is unavailable" in rep3.reason or "timed out" in rep3.reason, rep3.reason
    assert not Release.objects.filter(state__in=(ReleaseState.PENDING, ReleaseState.DEPLOYING)).exists()
    assert_chain_intact()
