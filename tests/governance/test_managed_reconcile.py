"""The reconciler with the managed hosts' particulars: Hugging Face names releases by repo commit (so releases
of one version share a host id), endpoints restart and pause on their own, Modal's rollback names no URL, a
Replicate deployment or Modal app deleted and created again numbers its releases from 1 again, and credentials
are files the worker may not be able to read. Hosts are the wire-compatible local servers and CLI
(tests/fakes) driven by the real adapters; tasks run in-process."""

import json
import os
import time

import httpx
import pytest

from audit.models import AuditEvent
from governance import deployment, deployment_tasks
from governance.choices import ReleaseState
from governance.models import DeploymentTarget, ServingPeriod
from registry.models import ModelVersion
from tests.fakes import modal_cli
from tests.fakes.hf_endpoints_server import HFEndpointsServer
from tests.fakes.replicate_server import ReplicateServer
from tests.governance.conftest import approved_release, create_target, register_second_version

pytestmark = pytest.mark.django_db(transaction=True)

HF_TOKEN = "hf_ManagedReconcileToken0123456789"  # noqa: S105 - the local server's test account
COMMIT = {1: "a" * 40, 2: "b" * 40}
POLICY = {"approvals_required": 1, "approver_groups": ["reviewers"]}


@pytest.fixture
def two_versions(world):
    register_second_version(world)


def converge(target: DeploymentTarget, tries: int = 40) -> str:
    outcome = None
    for _ in range(tries):
        outcome = deployment.reconcile(target.pk, owner="test")
        if outcome == "converged":
            break
        time.sleep(0.05)
    return outcome


def managed_target(world, name: str, kind: str, config: dict, credentials_ref: str, revisions=None):
    """Target `name` (one reviewer approves) created through the API; `revisions`: version number -> its
    host_revision tag."""
    created = create_target(
        world["admin"],
        name=name,
        kind=kind,
        stage="production",
        config=config,
        credentials_ref=credentials_ref,
        policy=POLICY,
    )
    assert created.status_code == 201, created.json()
    for number, revision in (revisions or {}).items():
        ModelVersion.objects.filter(number=number).update(tags={"host_revision": revision})
    return DeploymentTarget.objects.get(name=name)


def actions(since: int) -> list[str]:
    return list(AuditEvent.objects.filter(seq__gt=since).order_by("seq").values_list("action", flat=True))


# --- Hugging Face ---------------------------------------------------------------------------------


@pytest.fixture
def hf(monkeypatch):
    monkeypatch.setenv("HF_TOKEN_MANAGED", HF_TOKEN)
    with HFEndpointsServer(token=HF_TOKEN, namespaces=("acme",)) as server:
        server.pending_delay = server.init_delay = server.update_delay = 0.0
        for commit in COMMIT.values():
            server.add_revision("acme/churn", commit)
        yield server


@pytest.fixture
def hfp(world, hf, two_versions):
    config = {
        "namespace": "acme",
        "endpoint": "churn",
        "repository": "acme/churn",
        "base_url": hf.api_url,
        "timeout_seconds": 2,
    }
    return managed_target(world, "hfp", "hf_endpoint", config, "env:HF_TOKEN_MANAGED", COMMIT)


def test_rollback_to_a_release_whose_commit_a_newer_release_shares_goes_live(world, hf, hfp):
    """Releases 1 and 3 are version 1 (one commit). Rolled back to release 1, the endpoint serves that commit:
    release 1 is live (it stayed `deploying` forever: the commit was taken for release 3, the newest with it)."""
    first = approved_release(world, hfp, 1)
    assert converge(hfp) == "converged"
    second = approved_release(world, hfp, 2)
    assert converge(hfp) == "converged"
    approved_release(world, hfp, 1)
    assert converge(hfp) == "converged"
    deployment.deployment_rollback(actor=world["admin"].user, target=hfp, reason="v1 again", to_number=second.number)
    assert converge(hfp) == "converged"
    deployment.deployment_rollback(actor=world["admin"].user, target=hfp, reason="back", to_number=first.number)
    assert converge(hfp) == "converged"
    first.refresh_from_db()
    assert first.state == ReleaseState.LIVE
    assert hf.endpoint("acme", "churn")["model"]["revision"] == COMMIT[1]


def test_a_live_endpoint_restarting_is_not_drift(world, hf, hfp):
    """An endpoint waking from zero or restarting (`initializing`) at the live commit is the same release: no
    drift event, no second serving period, no second `release.live`."""
    live = approved_release(world, hfp, 1)
    assert converge(hfp) == "converged"
    before = AuditEvent.objects.latest("seq").seq
    hf.init_delay = 0.5
    hf.act(hf.endpoints[("acme", "churn")], "resume")
    assert deployment.reconcile(hfp.pk, owner="test") == "settling"
    live.refresh_from_db()
    assert live.state == ReleaseState.LIVE
    time.sleep(0.6)
    assert deployment.reconcile(hfp.pk, owner="test") == "converged"
    assert actions(before) == []
    assert ServingPeriod.objects.filter(release=live).count() == 1


def test_a_paused_live_endpoint_fails_the_release_with_the_reason(world, hf, hfp):
    live = approved_release(world, hfp, 1)
    assert converge(hfp) == "converged"
    hf.act(hf.endpoints[("acme", "churn")], "pause")
    assert deployment_tasks.reconcile_target.apply(args=(hfp.pk,)).get() == "failed"
    live.refresh_from_db()
    assert live.state == ReleaseState.FAILED
    assert "is paused; resume it before deploying to it" in live.reason


def test_a_release_after_one_whose_endpoint_failed_replaces_the_endpoint(world, hf, hfp):
    """Release 1's commit never starts (the endpoint is `failed`) and the release fails. HF takes no update of a
    failed endpoint, so release 2 (another commit) failed too when its deploy PUT to it; the endpoint is now
    deleted and created at release 2's commit, which goes live."""
    hf.bad_revisions.add(COMMIT[1])
    first = approved_release(world, hfp, 1)
    assert deployment_tasks.reconcile_target.apply(args=(hfp.pk,)).get() == "failed"
    first.refresh_from_db()
    assert first.state == ReleaseState.FAILED and "failed to deploy" in first.reason
    second = approved_release(world, hfp, 2)
    assert converge(hfp) == "converged"
    second.refresh_from_db()
    assert second.state == ReleaseState.LIVE and second.host_release_id == COMMIT[2]
    assert hf.endpoint("acme", "churn")["model"]["revision"] == COMMIT[2]
    assert [r["method"] for r in hf.requests if r["method"] != "GET"] == ["POST", "DELETE", "POST"]


# --- Modal ----------------------------------------------------------------------------------------

MODAL_ID, MODAL_SECRET = "ak-ManagedReconcile01234", "as-ManagedReconcileSecret0123456"


@pytest.fixture
def modal(world, two_versions, tmp_path, monkeypatch):
    bin_dir, state = tmp_path / "bin", tmp_path / "modal-state.json"
    modal_cli.install(bin_dir, state, token_id=MODAL_ID, token_secret=MODAL_SECRET, workspace="acme")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv(modal_cli.STATE_ENV, str(state))
    monkeypatch.setenv("MODAL_CREDENTIAL_MANAGED", f"{MODAL_ID}:{MODAL_SECRET}")
    config = {"app_name": "churn", "timeout_seconds": 60}
    return managed_target(world, "mod", "modal", config, "env:MODAL_CREDENTIAL_MANAGED")


def test_a_modal_rollback_keeps_the_release_url(world, modal):
    """`modal app rollback` prints no URL: the release keeps the one its deploy named (it was blanked, and the
    `release.live` event recorded an empty endpoint_url)."""
    first = approved_release(world, modal, 1)
    assert converge(modal) == "converged"
    first.refresh_from_db()
    url = first.endpoint_url
    assert url.startswith("https://")
    approved_release(world, modal, 2)
    assert converge(modal) == "converged"
    before = AuditEvent.objects.latest("seq").seq
    deployment.deployment_rollback(actor=world["admin"].user, target=modal, reason="back", to_number=first.number)
    assert converge(modal) == "converged"
    first.refresh_from_db()
    assert (first.state, first.endpoint_url) == (ReleaseState.LIVE, url)
    live = AuditEvent.objects.get(seq__gt=before, action="release.live")
    assert json.loads(live.after)["endpoint_url"] == url


def test_a_modal_rollback_after_the_app_was_stopped_and_redeployed_deploys(world, modal):
    """The app is stopped and the reconcile deploys it again: a new app, whose versions start at v1 again. Release
    1 had stored "v1" of the old app, release 2 now "v1" of the new one, and the rollback to release 1 was marked
    live with no deploy while the app served release 2's version."""
    state = modal_cli.State(os.environ[modal_cli.STATE_ENV])
    first = approved_release(world, modal, 1)
    assert converge(modal) == "converged"
    approved_release(world, modal, 2)
    assert converge(modal) == "converged"
    with state.edit() as data:
        data["apps"]["main/churn"]["state"] = "stopped"  # someone ran `modal app stop churn`
    assert converge(modal) == "converged"  # drift: release 2 deployed again, on a new app
    deploys = state.read()["deploys"]
    deployment.deployment_rollback(actor=world["admin"].user, target=modal, reason="back", to_number=first.number)
    assert converge(modal) == "converged"
    first.refresh_from_db()
    assert first.state == ReleaseState.LIVE
    assert state.read()["deploys"] == deploys + 1
    assert state.history("churn")[-1]["tag"] == tag(first)


def test_a_live_modal_release_with_an_id_stored_before_ids_named_the_app_stays_live(world, modal):
    """Stored before host release ids named the app ("v1", not "v1@ap-…"), the live release is what the app
    serves: no drift, no deploy."""
    state = modal_cli.State(os.environ[modal_cli.STATE_ENV])
    live = approved_release(world, modal, 1)
    assert converge(modal) == "converged"
    live.refresh_from_db()
    assert live.host_release_id.startswith("v1@ap-")
    type(live).objects.filter(pk=live.pk).update(host_release_id="v1")
    before, calls = AuditEvent.objects.latest("seq").seq, len(state.read()["calls"])
    assert deployment.reconcile(modal.pk, owner="test") == "converged"
    live.refresh_from_db()
    assert live.state == ReleaseState.LIVE and live.host_release_id.startswith("v1@ap-")
    assert actions(before) == []  # renewed to what the app serves it under, which then matches exactly
    assert [c["argv"][:2] for c in state.read()["calls"][calls:]] == [["app", "info"]]


def tag(release) -> str:
    return f"v{release.number}-{release.version.digest.removeprefix('sha256:')[:12]}"


# --- Replicate ------------------------------------------------------------------------------------

REPLICATE_TOKEN = "r8_ManagedReconcileToken0123456789"  # noqa: S105 - the local server's test account
VERSION_ID = {1: "1" * 64, 2: "2" * 64}


@pytest.fixture
def rep(monkeypatch):
    monkeypatch.setenv("REPLICATE_TOKEN_MANAGED", REPLICATE_TOKEN)
    with ReplicateServer(token=REPLICATE_TOKEN, username="acme") as server:
        for version in VERSION_ID.values():
            server.add_version("acme/churn", version)
        yield server


@pytest.fixture
def rt(world, rep, two_versions):
    config = {"owner": "acme", "deployment": "churn", "model": "acme/churn", "base_url": rep.url, "timeout_seconds": 2}
    return managed_target(world, "rep", "replicate", config, "env:REPLICATE_TOKEN_MANAGED", VERSION_ID)


def serves(rep) -> str:
    return rep.deployment("acme", "churn")["current_release"]["version"]


def test_a_replicate_rollback_after_the_deployment_was_recreated_moves_the_host(world, rep, rt):
    """The deployment is deleted (in Replicate's console) and the reconcile creates it again, at release 1 again:
    release 1 had stored Replicate's "1", release 2 now the new deployment's "1", and the rollback to release 1
    was marked live with no update while the deployment served release 2's version."""
    first = approved_release(world, rt, 1)
    assert converge(rt) == "converged"
    approved_release(world, rt, 2)
    assert converge(rt) == "converged"
    with rep.lock:
        del rep.deployments[("acme", "churn")]
    assert converge(rt) == "converged"  # drift: created again, serving release 2's version
    assert rep.deployment("acme", "churn")["current_release"]["number"] == 1
    deployment.deployment_rollback(actor=world["admin"].user, target=rt, reason="back", to_number=first.number)
    assert converge(rt) == "converged"
    first.refresh_from_db()
    assert first.state == ReleaseState.LIVE
    assert serves(rep) == VERSION_ID[1]


def test_live_replicate_releases_with_ids_stored_before_they_were_unique_stay_live(world, rep, rt):
    """Ids stored before they named when Replicate made the release ("2", not "2@<created_at>"): the live release
    is what the deployment serves (no drift, no update); an older one is not taken for what a deployment created
    again numbers the same."""
    first = approved_release(world, rt, 1)
    assert converge(rt) == "converged"
    second = approved_release(world, rt, 2)
    assert converge(rt) == "converged"
    type(first).objects.filter(pk=first.pk).update(host_release_id="1")
    type(second).objects.filter(pk=second.pk).update(host_release_id="2")
    before, requests = AuditEvent.objects.latest("seq").seq, len(rep.requests)
    assert deployment.reconcile(rt.pk, owner="test") == "converged"
    second.refresh_from_db()
    assert second.state == ReleaseState.LIVE
    assert second.host_release_id == f"2@{rep.deployment('acme', 'churn')['current_release']['created_at']}"
    assert actions(before) == []
    assert [r["method"] for r in rep.requests[requests:]] == ["GET"]

    # Renewed, the id matches only what it names: a deployment created again whose release 2 serves another
    # version (release 1's) is drift, and repaired.
    with rep.lock:
        current = rep.deployments[("acme", "churn")]["current_release"]
        current.update(version=VERSION_ID[1], created_at="2031-01-01T00:00:00.000000Z")
    converge(rt)
    assert serves(rep) == VERSION_ID[2]
    assert "target.drift_detected" in actions(before)

    with rep.lock:
        del rep.deployments[("acme", "churn")]
    assert converge(rt) == "converged"  # release 2 created again: "1@<created_at>", and release 1 stored "1"
    deployment.deployment_rollback(actor=world["admin"].user, target=rt, reason="back", to_number=first.number)
    assert converge(rt) == "converged"
    first.refresh_from_db()
    assert first.state == ReleaseState.LIVE
    assert serves(rep) == VERSION_ID[1]


# --- credentials ----------------------------------------------------------------------------------


def test_an_unreadable_secret_file_fails_the_release_with_the_reason(world, hf, hfp, settings, tmp_path):
    """A secret file the worker cannot decode fails the release, naming the credential and never its bytes
    (UnicodeDecodeError escaped the task: the release stayed pending with no reason, retried every 30 s)."""
    settings.SECRETS_DIR = str(tmp_path)
    (tmp_path / "hf-token").write_bytes(b"hf_\xff\xfe-not-utf8")
    DeploymentTarget.objects.filter(pk=hfp.pk).update(credentials_ref="secret:hf-token")
    pending = approved_release(world, hfp, 1)
    assert deployment_tasks.reconcile_target.apply(args=(hfp.pk,)).get() == "failed"
    pending.refresh_from_db()
    assert pending.state == ReleaseState.FAILED
    assert pending.reason.endswith(
        "failed: credential secret:hf-token cannot be read by the worker: UnicodeDecodeError"
    )
    assert "not-utf8" not in pending.reason


def test_a_release_not_live_by_the_deadline_fails_with_what_the_host_says(world, hf, hfp, settings):
    """An endpoint waiting for capacity never becomes ready: past DEPLOY_TIMEOUT_SECONDS the release fails with
    the host's state (it stayed `deploying`, re-polled every 30 s for good, with no reason)."""
    settings.DEPLOY_TIMEOUT_SECONDS = 1
    hf.pending_delay = 600
    pending = approved_release(world, hfp, 1)
    assert deployment.reconcile(hfp.pk, owner="test") == "deploying"
    pending.refresh_from_db()
    assert pending.state == ReleaseState.DEPLOYING and pending.deploying_since is not None
    time.sleep(1.2)
    assert deployment_tasks.reconcile_target.apply(args=(hfp.pk,)).get() == "failed"
    pending.refresh_from_db()
    assert pending.state == ReleaseState.FAILED
    assert "not live 1 s after its deploy began (DEPLOY_TIMEOUT_SECONDS); the host says: deploying" in pending.reason
    assert "pending" in pending.reason


def console_update(hf, commit: str) -> None:
    """Someone changes the endpoint's revision in Hugging Face's console (the same API call)."""
    changed = httpx.put(
        f"{hf.api_url}/endpoint/acme/churn",
        json={"model": {"revision": commit}},
        headers={"Authorization": f"Bearer {HF_TOKEN}"},
    )
    assert changed.status_code == 200, changed.text


def test_an_endpoint_moving_to_another_revision_is_drift_while_it_moves(world, hf, hfp):
    """A revision changed in the console is drift at once, not once the endpoint is up on it (settling covers
    only a restart with the live revision)."""
    live = approved_release(world, hfp, 1)
    assert converge(hfp) == "converged"
    hf.update_delay = 600
    console_update(hf, COMMIT[2])
    before = AuditEvent.objects.latest("seq").seq
    assert deployment.reconcile(hfp.pk, owner="test") == "deploying"
    assert actions(before)[0] == "target.drift_detected"
    assert hf.endpoint("acme", "churn")["model"]["revision"] == COMMIT[1]  # redeployed
    live.refresh_from_db()
    assert live.state == ReleaseState.DEPLOYING


def test_after_a_release_fails_its_deadline_the_fallback_is_redeployed(world, hf, hfp, settings):
    """Release 2 never finishes updating and fails at the deadline; the endpoint is still moving to its
    revision, so the fallback (release 1, live) is redeployed instead of taken for settled."""
    approved_release(world, hfp, 1)
    assert converge(hfp) == "converged"
    settings.DEPLOY_TIMEOUT_SECONDS = 1
    hf.update_delay = 600
    failing = approved_release(world, hfp, 2)
    assert deployment.reconcile(hfp.pk, owner="test") == "deploying"
    time.sleep(1.2)
    assert deployment_tasks.reconcile_target.apply(args=(hfp.pk,)).get() == "failed"
    failing.refresh_from_db()
    assert failing.state == ReleaseState.FAILED
    assert hf.endpoint("acme", "churn")["model"]["revision"] == COMMIT[2]
    hf.update_delay = 0
    assert deployment.reconcile(hfp.pk, owner="test") in ("deploying", "converged")
    assert hf.endpoint("acme", "churn")["model"]["revision"] == COMMIT[1]
    assert converge(hfp) == "converged"
