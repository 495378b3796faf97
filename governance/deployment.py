"""The deployment engine: desired state per target, and the reconciler that converges hosts to it.

Approval, rollback and (later) canary steps only *set desired state* (`target.desired_release`)
in a transaction with their audit event, and enqueue a reconcile after commit. The reconciler
claims the target with a lease (a conditional UPDATE, so at most one worker converges a target and
a killed worker's claim runs out), asks the host what it serves, deploys when that differs, and
records the outcome. Host calls happen outside database transactions; every state write re-checks
that the desired release is still the one it worked on.
"""

import contextlib
import contextvars
import dataclasses
import errno
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Max, Q
from django.db.models.functions import Now
from django.utils import timezone

from audit.services import record
from core.errors import Conflict, InvalidInput
from governance import free_text, selectors
from governance.choices import PromotionState, ReleaseState
from governance.hosts import HOSTS
from governance.hosts.base import Health, HostError, HostStatus, ReleaseSpec
from governance.models import DeploymentTarget, PromotionRequest, Release, ServingPeriod
from governance.rollout import Rollout, judge, plan
from lineage import services as lineage
from lineage.choices import EdgeKind, NodeType
from registry.choices import VersionStatus
from registry.models import ModelVersion
from registry.storage import CHUNK, blob_store

log = logging.getLogger(__name__)

SYSTEM = "system:reconciler"
ACTIVE = (ReleaseState.PENDING, ReleaseState.DEPLOYING)


def _enqueue(target_id: int) -> None:
    """Kick the reconciler; if the broker is down the periodic reconcile picks the target up. Published once, without
    Celery's publish retries: an approval's or a rollback's request waited for each of them (the broker's socket
    timeout, 5 s, every time) while the broker did not answer. A task's soft time limit reached during the publish
    (a broker that stopped answering) goes on up: swallowed, the task ran on."""
    from governance import deployment_tasks

    try:
        deployment_tasks.reconcile_target.apply_async((target_id,), retry=False)
    except SoftTimeLimitExceeded:
        raise
    except Exception:  # noqa: BLE001 - the database row is the truth; beat retries
        log.warning("could not enqueue reconcile of target %s; the periodic reconcile will", target_id)


def _lock_target(target_id: int) -> DeploymentTarget:
    """The target and its desired release, each locked and read by a statement of its own (lock order: target, then
    release). Not one statement joining the release: one that waits for the target's lock rereads the target
    (PostgreSQL's EvalPlanQual) but keeps the release row it joined before the wait, so a desired release changed
    meanwhile (a final approval, a release going live) came back as None beside the new desired_release_id."""
    target = DeploymentTarget.objects.select_for_update(no_key=True).get(pk=target_id)
    if target.desired_release_id is not None:
        target.desired_release = Release.objects.select_for_update(no_key=True).get(pk=target.desired_release_id)
    return target


def _next_number(target: DeploymentTarget) -> int:
    return (target.releases.aggregate(n=Max("number"))["n"] or 0) + 1


def _retire(release: Release | None, state: str, now) -> None:
    if release is not None and release.state in (*ACTIVE, ReleaseState.LIVE):
        release.state = state
        release.ended_at = now
        release.save(update_fields=["state", "ended_at"])


def _record_superseded(release: Release, by: Release, actor) -> None:
    """The event of a release another replaced (a newer approval, or another release that went live): its own, so
    a release's events say when and why it stopped. Call after the row locks (record() takes the chain head)."""
    record(
        action="release.superseded",
        subject=release,
        actor=actor,
        after={"target": by.target.name, "number": release.number, "by": by.number},
    )


def release_start(*, actor, promotion: PromotionRequest) -> Release:
    """An approved promotion becomes the target's desired release. Runs inside the approval's transaction."""
    target = _lock_target(promotion.target_id)  # and the desired release it may supersede
    # Read again, not from the request's row: an archive that committed while this approval waited for the request's
    # lock (check_archive takes it) is not in the version read with that row. Raising rolls the approval back.
    if ModelVersion.objects.filter(pk=promotion.version_id, status=VersionStatus.ARCHIVED).exists():
        raise Conflict(
            f"Version {promotion.version} was archived while promotion #{promotion.pk} was being decided; archived "
            "versions are not deployed. Nothing was recorded.",
            code="version_archived",
        )
    now = timezone.now()
    previous = target.desired_release
    superseded = previous is not None and previous.state in ACTIVE
    if superseded:  # never went live: replaced by the newer approval
        _retire(previous, ReleaseState.SUPERSEDED, now)
    release = Release.objects.create(
        target=target,
        version=promotion.version,
        number=_next_number(target),
        promotion=promotion,
        host_revision=promotion.host_revision,
        state=ReleaseState.PENDING,
        created_by=actor if not isinstance(actor, str) else None,
        reason=f"promotion #{promotion.pk}",
    )
    record_deployed_edge(release)
    target.desired_release = release
    target.save(update_fields=["desired_release"])
    if superseded:
        _record_superseded(previous, release, actor)
    record(
        action="release.created",
        subject=release,
        actor=actor,
        after={
            "target": target.name,
            "number": release.number,
            "model": str(promotion.version.model),
            "version": promotion.version.number,
            "digest": promotion.version.digest,
            "promotion": promotion.pk,
        },
    )
    transaction.on_commit(lambda: _enqueue(target.pk))
    return release


def check_archive(*, actor, version: ModelVersion) -> None:
    """The registry's archive check (GovernanceConfig.ready): a version a release serves, or is on its way to serve,
    is not archived (archived is final: never served again); roll the target back or promote another version first.

    It runs under the version's row lock and locks the version's pending requests, then the targets it has releases
    on (lock order: version, promotion, target): an approval or a rollback under way, which may make a release of it
    desired, commits before the releases are read, and one that waited for this archive finds the version archived
    (release_start, deployment_rollback)."""
    list(PromotionRequest.objects.select_for_update(no_key=True).filter(version=version, state=PromotionState.PENDING))
    released_on = Release.objects.filter(version=version).values("target_id")
    list(DeploymentTarget.objects.select_for_update(no_key=True).filter(pk__in=released_on).order_by("pk"))
    releases = list(
        Release.objects.filter(version=version, state__in=(*ACTIVE, ReleaseState.LIVE))
        .select_related("target")
        .order_by("target__name", "number")
    )
    if not releases:
        return
    visible = set(selectors.targets_visible(user=actor).values_list("pk", flat=True))
    shown = [r for r in releases if r.target_id in visible]
    hidden = len(releases) - len(shown)
    named = [f"release {r.number} on {r.target.name} ({r.state})" for r in shown]
    where = ", ".join(named + ([f"{hidden} on targets you may not view"] if hidden else []))
    raise Conflict(
        f"Version {version} cannot be archived while it serves or is being deployed: {where}. Roll the target back "
        "or promote another version there first.",
        code="version_in_use",
        detail={"releases": [{"target": r.target.name, "number": r.number, "state": r.state} for r in shown]},
    )


def record_deployed_edge(release: Release) -> None:
    """The lineage fact 'this model version was deployed as this release' (model -> release), as of
    the release's creation, so the lineage graph reaches serving from the data that trained it."""
    lineage.edges_append(
        edges=[((NodeType.MODEL, release.version_id), (NodeType.RELEASE, release.pk), EdgeKind.DEPLOYED)],
        recorded_at=release.created_at,
    )


def previous_good(target: DeploymentTarget) -> Release | None:
    """The release that served before the current desired one, that nobody rolled back from and whose version
    is not archived: the default rollback destination. (Without that exception a second "roll back", a double click or a
    retried request, would send traffic back to the release the first one rolled back from.)"""
    periods = (
        ServingPeriod.objects.filter(target=target)
        .exclude(release_id=target.desired_release_id)
        .exclude(release__state=ReleaseState.ROLLED_BACK)
        .exclude(release__version__status=VersionStatus.ARCHIVED)  # archived is final: not served again
        .select_related("release")
        .order_by("-started_at", "-id")
    )
    period = periods.first()
    return period.release if period else None


def deployment_rollback(
    *, actor, target: DeploymentTarget, reason: str, to_number: int | None = None, from_number: int | None = None
) -> Release:
    """Point the target back at an earlier release that served (the previous one by default). With `from_number`
    (the desired release a rollback form showed), only if it is still the desired one: a rollback decided on a page
    read before a newer approval must not roll back a release its operator never saw."""
    if not reason or not reason.strip():
        raise InvalidInput("A rollback needs a reason.", detail={"reason": ["Required."]})
    free_text.check("reason", reason)
    with transaction.atomic():
        target = _lock_target(target.pk)
        current = target.desired_release
        if to_number is not None:
            to = target.releases.filter(number=to_number).select_related("version__model").first()
            if to is None:
                raise InvalidInput(f"{target} has no release {to_number}.", detail={"release": ["No such release."]})
            if to.live_at is None:
                raise Conflict(
                    f"Release {to_number} of {target} never served; only a release that was live can be "
                    "rolled back to.",
                    code="never_live",
                )
            if to.version.status == VersionStatus.ARCHIVED:
                # Names no model: a deployer may not view the models the target served, and could walk release numbers.
                raise Conflict(
                    f"Release {to_number} of {target} serves an archived version; archived versions are not "
                    "served again.",
                    code="version_archived",
                )
        else:
            to = previous_good(target)
            if to is None:
                raise Conflict(
                    f"{target} has no earlier release that served; nothing to roll back to.",
                    code="nothing_to_roll_back_to",
                )
        if current is not None and current.pk == to.pk:
            raise Conflict(f"Release {to.number} is already the desired release of {target}.", code="already_desired")
        if from_number is not None and (current is None or current.number != from_number):
            now_desired = f"release {current.number}" if current else "no release"
            raise Conflict(
                f"{target} changed since you read it: release {from_number} was desired then, {now_desired} is "
                "now. Read the target again and decide on what it serves now.",
                code="changed_since_review",
            )
        now = timezone.now()
        _retire(current, ReleaseState.ROLLED_BACK, now)
        if to.state != ReleaseState.LIVE:
            to.state = ReleaseState.PENDING
            to.ended_at = None
            to.save(update_fields=["state", "ended_at"])
        # else: an abort of a release still on its way (the one it would have replaced still serves): `to` stays live,
        # its serving period open; as pending, a newer approval would supersede it while it served, and a host
        # error fail it.
        target.desired_release = to
        target.save(update_fields=["desired_release"])
        record(
            action="release.rolled_back",
            subject=target,
            actor=actor,
            reason=reason,
            after={
                "from": current.number if current else None,
                "to": to.number,
                "model": str(to.version.model),
                "version": to.version.number,
            },
        )
    transaction.on_commit(lambda: _enqueue(target.pk))
    return to


# --- the reconciler ---------------------------------------------------------------------------


def _claim(target_id: int, owner: str) -> bool:
    # Leases are stamped and compared with the database's clock: workers on other machines wrote them, and a
    # worker whose clock runs ahead would otherwise take a lease still held and deploy beside its holder.
    lease = timedelta(seconds=settings.RECONCILE_LEASE_SECONDS)
    return bool(
        DeploymentTarget.objects.filter(pk=target_id)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=Now()))
        .update(lease_owner=owner, lease_until=Now() + lease)
    )


def _unclaim(target_id: int, owner: str) -> None:
    DeploymentTarget.objects.filter(pk=target_id, lease_owner=owner).update(lease_owner="", lease_until=None)


class LeaseLost(Exception):
    """The reconcile's claim on its target ran out or passed to another worker: it stops before its next write."""


class _LeaseKeeper(threading.Thread):
    """Renews a held claim every third of the lease while the reconcile runs: a host call (a large
    self-hosted copy, a slow platform) may outlast the lease, and a second worker would then claim the
    target and deploy beside the first. A killed worker takes this thread with it, so its claim still runs
    out; a hung one stops being renewed after RECONCILE_MAX_HOLD_SECONDS, so a rollback is not locked out.

    A renewal that fails (a connection reset, a failover) is retried on a fresh connection until the reconcile
    ends. Once the claim is gone (another worker holds it, or it ran out before a renewal got through) `lost`
    says why, and the reconcile checks it (`check()`) before each write it makes after a host call."""

    def __init__(self, target_id: int, owner: str, claimed_at: float):
        super().__init__(name=f"lease-{target_id}", daemon=True)
        self.target_id, self.owner, self.done = target_id, owner, threading.Event()
        self.context = contextvars.copy_context()  # its log lines name the task and request id, as the reconcile's
        self.lease = settings.RECONCILE_LEASE_SECONDS
        # Local monotonic time read before the UPDATE that stamped the lease: never later than the database's
        # expiry. The margin leaves a write checked just before that time room to commit before it.
        self.held_until = claimed_at + self.lease
        self.margin = min(5.0, self.lease / 10)
        self.taken = False

    @property
    def lost(self) -> str:
        """Why the claim is no longer this reconcile's; empty while it holds."""
        if self.taken:
            return "another worker took its claim on the target"
        if time.monotonic() >= self.held_until - self.margin:
            return "its claim on the target ran out before it could be renewed"
        return ""

    def check(self) -> None:
        if why := self.lost:
            raise LeaseLost(why)

    def run(self) -> None:
        self.context.run(self._keep)

    def _keep(self) -> None:
        period = self.lease / 3
        give_up = time.monotonic() + settings.RECONCILE_MAX_HOLD_SECONDS
        wait = period
        try:
            while not self.done.wait(wait):
                if time.monotonic() > give_up:
                    log.warning("reconcile of target %s still running; its claim is no longer renewed", self.target_id)
                    return
                renewed = self._renew()
                if why := self.lost:
                    log.warning("reconcile of target %s: %s; it stops before its next write", self.target_id, why)
                    return
                wait = period if renewed else period / 4  # try again well before the lease runs out
        finally:
            connection.close()  # this thread's own connection

    def _renew(self) -> bool:
        started = time.monotonic()
        try:
            renewed = DeploymentTarget.objects.filter(pk=self.target_id, lease_owner=self.owner).update(
                lease_until=Now() + timedelta(seconds=self.lease)
            )
        except Exception as exc:  # noqa: BLE001 - a transient database error must not end the renewals
            log.warning("could not renew the claim on target %s, retrying: %s", self.target_id, exc)
            with contextlib.suppress(Exception):
                connection.close()  # the next attempt opens a fresh connection
            return False
        if renewed:
            self.held_until = started + self.lease
        else:
            self.taken = True
        return bool(renewed)

    def stop(self) -> None:
        self.done.set()
        self.join()


# Where the platform's own cloud and database credentials live (boto3 reads AWS_*, libpq PG*).
PLATFORM_ENV_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCP_", "PG", "DJANGO_", "CELERY_")


def credentials_ref_problem(ref: str) -> str | None:
    """Why a target may not name this credential, or None. A target's credential is sent to the host its
    config names, so it must not be the registry's own (a target's creator could otherwise send
    SECRET_KEY or DATABASE_URL to a server of their choosing): no variable the settings read, no cloud or
    database credential variable."""
    kind, _, name = ref.partition(":")
    if kind == "env" and (name in settings.OWN_ENVIRONMENT or name.startswith(PLATFORM_ENV_PREFIXES)):
        return (
            f"credentials_ref env:{name} names the registry's own configuration, not a host credential: "
            "keep the host's credential in a variable (or secret file) of its own."
        )
    return None


def resolve_credentials(ref: str) -> str | None:
    """env:VAR -> the variable's value; secret:name -> the file SECRETS_DIR/name. Never logged."""
    if not ref:
        return None
    if problem := credentials_ref_problem(ref):  # a target created before the rule
        raise HostError(problem, retryable=False)
    kind, _, name = ref.partition(":")
    if kind == "env":
        value = os.environ.get(name)
    else:
        path = Path(settings.SECRETS_DIR) / name
        try:
            value = path.read_text().strip() if path.is_file() else None
        except (OSError, UnicodeDecodeError) as exc:  # unreadable: say so (never what it holds) instead of crashing
            problem = f"credential {ref} cannot be read by the worker: {type(exc).__name__}"
            raise HostError(problem, retryable=False) from None
    if value is None:
        raise HostError(f"credential {ref} is not available to the worker", retryable=False)
    return value


# A full or failing disk may clear up; anything else (a name too long, a file where a folder must go) won't.
TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EBUSY}


def materialize(release: Release) -> str:
    """Copy a registry-stored version's files into a release directory, checking every sha256 on the way.

    The directory is reused only if the marker beside it names this version's digest: after a database
    restore (or a registry re-created on the same DATA_DIR) release number N may be another version. The
    marker lives beside the folder, not in it, since a manifest may hold a file of any name."""
    version = release.version
    if not version.artifact_uri.startswith("registry://"):
        raise HostError(
            f"self-hosted targets serve registry-stored artifacts, not {version.artifact_uri}", retryable=False
        )
    root = _copies(release.target.name) / str(release.number)
    marker = _marker(root)
    if root.is_dir() and marker.is_file() and marker.read_text() == version.digest:
        return str(root)
    staging = root.with_name(f"{root.name}.{uuid.uuid4().hex}.tmp")
    try:
        _copy_files(version, staging)
        marker.unlink(missing_ok=True)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
        marker.write_text(version.digest)
    except OSError as exc:
        raise HostError(
            f"could not copy release {release.number}'s files to {root}: {exc}", retryable=exc.errno in TRANSIENT_ERRNOS
        ) from None
    except (BotoCoreError, ClientError) as exc:  # S3 unreachable or refusing: may well clear up
        raise HostError(f"could not read the artifact store: {type(exc).__name__}: {exc}", retryable=True) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return str(root)


def prune_release_copies(target: DeploymentTarget) -> list[int]:
    """Delete the file copies (materialize) of releases the target no longer runs, so the disk does not grow
    by a model per release. Kept: the desired and last good releases and the `keep_previous` most recently
    served others, as the self-hosted host keeps their servers running; a rollback to an older release copies
    its files again. Returns the release numbers whose copies were removed."""
    root = _copies(target.name)
    if target.kind != "self_hosted" or not root.is_dir():
        return []
    kept = {r.number for r in (target.desired_release, target.last_good_release) if r is not None}
    recent = (
        ServingPeriod.objects.filter(target=target)
        .order_by("-started_at", "-id")
        .values_list("release__number", flat=True)
    )
    others = [n for n in dict.fromkeys(recent) if n not in kept]
    kept |= set(others[: HOSTS[target.kind].module.releases_kept(target.config)])
    removed = []
    for folder in root.iterdir():
        if folder.is_dir() and folder.name.isdigit() and int(folder.name) not in kept:
            _marker(folder).unlink(missing_ok=True)  # first: never a marker alone
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(int(folder.name))
        elif folder.is_dir() and folder.name.endswith(".tmp"):
            # A copy a killed reconcile left half done (materialize removes its own otherwise); this runs under
            # the target's lease, so no copy is in progress.
            shutil.rmtree(folder, ignore_errors=True)
    return sorted(removed)


def _copies(target_name: str) -> Path:
    """The folder of a target's release copies, one subfolder per release number."""
    return Path(settings.DATA_DIR) / "releases" / target_name


def _marker(copy: Path) -> Path:
    """Beside a release copy, naming the digest it holds (a manifest may hold a file of any name)."""
    return copy.with_name(f"{copy.name}.complete")


def _copy_files(version, staging: Path) -> None:
    store = blob_store()
    for f in version.manifest["files"]:
        dest = staging / f["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        try:
            src = store.open(f["sha256"])
        except FileNotFoundError:
            raise HostError(
                f"stored artifact {f['path']} (sha256 {f['sha256']}) is missing from the artifact store; "
                "refusing to deploy",
                retryable=False,
            ) from None
        with src, dest.open("wb") as out:
            while chunk := src.read(CHUNK):
                hasher.update(chunk)
                out.write(chunk)
        if hasher.hexdigest() != f["sha256"]:
            raise HostError(
                f"stored artifact {f['path']} no longer matches its sha256; refusing to deploy", retryable=False
            )


def _spec(
    target: DeploymentTarget, release: Release, credentials: str | None, traffic: dict[int, int] | None = None
) -> ReleaseSpec:
    version = release.version
    return ReleaseSpec(
        target=target.name,
        config=target.config,
        credentials=credentials,
        release_number=release.number,
        model=str(version.model),
        version_number=version.number,
        digest=version.digest,
        artifact_uri=version.artifact_uri,
        files=tuple(version.manifest["files"]),
        artifact_dir=materialize(release) if target.kind == "self_hosted" else None,
        host_revision=release.host_revision,
        traffic=tuple(sorted((traffic or {}).items())),
    )


def host_revision_of(version: ModelVersion) -> str:
    """What a managed host deploys for a version: the revision its immutable artifact_uri pins (`…@<revision>`,
    `hf://org/repo@<commit>`), which no tag may override, else its `host_revision` tag. A registry:// URI pins
    none: the part after its "@" is the version's digest (or, stored before registration made those URIs
    canonical, a branch or another model's digest)."""
    pinned = "" if version.artifact_uri.startswith("registry://") else version.artifact_uri.partition("@")[2]
    if pinned and not pinned.startswith("sha256:"):
        return pinned
    return str(version.tags.get("host_revision") or "")


def _serving_number(status: HostStatus, target: DeploymentTarget, release: Release) -> int | None:
    """The release number serving all traffic, mapping host release ids where the host can't number them.

    Releases of one model revision share a host id (HF's commit): the host serving it serves `release`, the one
    converged, when that is its id, and otherwise the newest release with the id.

    A live release's id stored before ids were unique over time matches by number when no release matches exactly
    (_legacy_served_id)."""
    full = [s for s in status.serving if s.traffic_percent >= 100]
    if status.state != "ready" or len(full) != 1:
        return None
    serving = full[0]
    if serving.release_number:
        return serving.release_number
    candidates = target.releases.filter(host_release_id=serving.host_release_id)
    if candidates.filter(pk=release.pk).exists():
        return release.number
    match = candidates.order_by("-number").first()
    if match is None and _legacy_served_id(release, serving.host_release_id):
        return release.number
    return match.number if match else None


def _legacy_served_id(release: Release, served: str) -> str:
    """`served` (the id the host serves all traffic under) when it is `release`'s, whose id was stored before
    Replicate's and Modal's were made unique over time ("3", "v3"; now "3@<created_at>", "v3@<app id>"): the part
    before "@" is its id, and the release is live. Else "". Only the live release: the host still serving it after
    the upgrade is no drift, and no other old id can pass for what a re-created deployment or app numbers afresh
    (its release is deployed again, which the host takes as a no-op). _converge then stores `served` in its place
    (_renew_stored_id)."""
    stored = release.host_release_id
    if release.state != ReleaseState.LIVE or not stored or "@" in stored:
        return ""
    number, at, _ = served.partition("@")
    return served if at and number == stored else ""


def _mark_deploying(target_id: int, release_id: int) -> bool:
    """PENDING -> DEPLOYING. False if the release is no longer desired (a rollback or newer approval won)."""
    with transaction.atomic():
        target = DeploymentTarget.objects.select_for_update(no_key=True).get(pk=target_id)
        release = Release.objects.select_for_update(no_key=True).get(pk=release_id)
        if target.desired_release_id != release.pk or release.state != ReleaseState.PENDING:
            return target.desired_release_id == release.pk
        release.state = ReleaseState.DEPLOYING
        release.deploying_since = timezone.now()
        release.save(update_fields=["state", "deploying_since"])
        record(
            action="release.started",
            subject=release,
            actor=SYSTEM,
            after={"target": target.name, "number": release.number},
        )
    return True


def _mark_drifted(target_id: int, release_id: int, drift: dict) -> bool:
    """LIVE -> DEPLOYING for a redeploy, if the release is still the desired one and still live: the host
    status was read without locks, and a rollback may have replaced the release meanwhile."""
    with transaction.atomic():
        target = DeploymentTarget.objects.select_for_update(no_key=True).get(pk=target_id)
        release = Release.objects.select_for_update(no_key=True).get(pk=release_id)
        if target.desired_release_id != release.pk or release.state != ReleaseState.LIVE:
            return False
        record(action="target.drift_detected", subject=target, actor=SYSTEM, after=drift)
        release.state = ReleaseState.DEPLOYING
        release.deploying_since = timezone.now()
        release.save(update_fields=["state", "deploying_since"])
    return True


def _mark_live(target_id: int, release_id: int, status: HostStatus, host_release_id: str = "") -> None:
    target = _record_live(target_id, release_id, status, host_release_id)
    if target is None:  # already live (the periodic check) or no longer desired: nothing new to prune
        return
    try:
        prune_release_copies(target)
    except OSError:  # disk housekeeping never fails a deploy
        log.warning("could not prune release copies of target %s", target.name, exc_info=True)


def _record_live(
    target_id: int, release_id: int, status: HostStatus, host_release_id: str = ""
) -> DeploymentTarget | None:
    """Mark the release live if it is still desired and not yet live; returns the target then, else None."""
    with transaction.atomic():
        target = DeploymentTarget.objects.select_for_update(no_key=True).get(pk=target_id)
        release = Release.objects.select_for_update(no_key=True).get(pk=release_id)
        if target.desired_release_id != release.pk or release.state == ReleaseState.LIVE:
            return None
        now = timezone.now()
        replaced = list(target.releases.filter(state=ReleaseState.LIVE).exclude(pk=release.pk))
        for other in replaced:
            _retire(other, ReleaseState.SUPERSEDED, now)
        serving = ServingPeriod.objects.filter(target=target, ended_at__isnull=True)
        if list(serving.values_list("release_id", flat=True)) != [release.pk]:
            serving.update(ended_at=now)
            ServingPeriod.objects.create(target=target, release=release, started_at=now)
            release.live_at = now
        # else it never stopped serving by our records (a drift repaired, an aborted deploy's host call undone):
        # its period and live_at, which the soak rule (min_live_on_stage) reads, go on.
        release.state = ReleaseState.LIVE
        release.traffic_percent = 100
        release.endpoint_url = status.endpoint_url or release.endpoint_url
        release.host_release_id = host_release_id or release.host_release_id
        release.save(update_fields=["state", "traffic_percent", "live_at", "endpoint_url", "host_release_id"])
        target.last_good_release = release
        target.save(update_fields=["last_good_release"])
        record(
            action="release.live",
            subject=release,
            actor=SYSTEM,
            after={
                "target": target.name,
                "number": release.number,
                "version": release.version.number,
                "endpoint_url": release.endpoint_url,
                "host_release_id": release.host_release_id,
            },
        )
        for other in replaced:
            _record_superseded(other, release, SYSTEM)
    return target


def release_fail(*, target_id: int, release_id: int, reason: str) -> None:
    """A release could not be converged: record why and fall back to the last good release if that still
    serves. Nothing changes unless it is still the target's desired release: a rollback or a newer approval
    may have replaced it while the host call that failed was under way."""
    with transaction.atomic():
        target = _lock_target(target_id)
        release = target.desired_release
        if release is None or release.pk != release_id or release.state not in ACTIVE:
            return
        release.state = ReleaseState.FAILED
        release.ended_at = timezone.now()
        release.reason = f"{release.reason}; failed: {reason}"[:2000]
        release.save(update_fields=["state", "ended_at", "reason"])
        # Not a release an operator rolled back from: a failed rollback stays visible instead of undoing itself.
        last_good = target.last_good_release
        live = last_good is not None and last_good.pk != release.pk and last_good.state == ReleaseState.LIVE
        fallback = last_good if live else None
        target.desired_release = fallback
        target.save(update_fields=["desired_release"])
        record(
            action="release.failed",
            subject=release,
            actor=SYSTEM,
            reason=reason,
            after={
                "target": target.name,
                "number": release.number,
                "fallback": fallback.number if fallback else None,
            },
        )
    if fallback is not None:
        transaction.on_commit(lambda: _enqueue(target_id))


LEASE_LOST = "lease_lost"


def reconcile(target_id: int, *, owner: str) -> str:
    """Converge one target. Returns converged | deploying | settling (the host is busy with the live release) |
    idle | busy | lease_lost (its claim ran out or passed to another worker: it stopped without writing, and the
    task or the periodic reconcile takes the target up again). Raises HostError from the host, naming the release
    it was converging (`release_id`) for release_fail."""
    # Each run holds the lease under a name of its own. A message the broker hands out again while its first
    # delivery still runs (Redis's visibility timeout, a lost connection) carries the same task id, and a
    # lease by task id let that second run in beside the first.
    owner = f"{owner[:51]}:{uuid.uuid4().hex[:12]}"  # lease_owner holds 64
    claimed_at = time.monotonic()
    if not _claim(target_id, owner):
        return "busy"
    keeper = _LeaseKeeper(target_id, owner, claimed_at)
    keeper.start()
    try:
        target = DeploymentTarget.objects.select_related("desired_release__version__model").get(pk=target_id)
        release = target.desired_release
        if release is None or release.state == ReleaseState.FAILED:
            return "idle"
        try:
            return _converge(target, release, keeper)
        except LeaseLost as exc:
            return _lease_lost(target, release, str(exc))
        except HostError as exc:
            if why := _lost_meanwhile(keeper, exc):  # not ours to record: the worker holding the target decides
                return _lease_lost(target, release, f"{why} (the host said: {exc})")
            exc.release_id = release.pk
            raise
        except Exception as exc:
            if why := _lost_meanwhile(keeper, exc):
                return _lease_lost(target, release, f"{why} ({type(exc).__name__})")
            # Anything else (a storage outage while copying files, a bug) retries like a host error, then fails the
            # release with a reason: escaping, it left the release deploying with none, and no deadline applied.
            log.exception("converging release %s of target %s failed", release.number, target.name)
            unexpected = HostError(
                f"unexpected {type(exc).__name__} while converging (the worker's log has the details)",
                retryable=True,
            )
            unexpected.release_id = release.pk
            raise unexpected from exc
    finally:
        keeper.stop()
        _unclaim(target_id, owner)


def _lost_meanwhile(keeper: _LeaseKeeper, exc: BaseException) -> str:
    """Why an error is not this reconcile's to record (its claim is gone), or empty. The soft time limit is always
    recorded: it fails the release while the claim still holds (the hard limit comes before the claim runs out)."""
    if isinstance(exc, SoftTimeLimitExceeded) or isinstance(exc.__cause__, SoftTimeLimitExceeded):
        return ""
    return keeper.lost


def _lease_lost(target: DeploymentTarget, release: Release, why: str) -> str:
    log.warning(
        "reconcile of target %s stopped without recording anything for release %s: %s; it will be reconciled again",
        target.name,
        release.number,
        why,
    )
    return LEASE_LOST


def _converge(target: DeploymentTarget, release: Release, lease: _LeaseKeeper) -> str:
    """Ask the host what it serves and deploy the release if that differs (outside any transaction). Every write
    after a host call, and every deploy, first checks the claim still holds (`lease.check()` raises LeaseLost)."""
    host = HOSTS[target.kind].adapter()
    credentials = resolve_credentials(target.credentials_ref)
    status = host.status(target.config, credentials)
    serving = _serving_number(status, target, release)
    if serving == release.number and not _mid_canary(release):
        lease.check()
        _renew_stored_id(release, status)
        _mark_live(target.pk, release.pk, status)
        return "converged"
    busy = status.busy_with if status.state == "deploying" else ""
    if release.state == ReleaseState.LIVE and busy and busy == release.host_release_id:
        # Restarting or waking from zero with the live release: not drift; the periodic reconcile looks again.
        # Busy with anything else (a change made in the host's console, a failed release's update still under
        # way after its fallback) is drift.
        return "settling"
    lease.check()
    if release.state == ReleaseState.LIVE:  # the host drifted away from what we know is live
        drift = {"desired": release.number, "host_serving": serving, "host_state": status.state}
        if not _mark_drifted(target.pk, release.pk, drift):
            return "idle"
    elif not _mark_deploying(target.pk, release.pk):
        return "idle"
    else:
        canary = _canary_plan(target, release, status)
        if canary is not None:
            return _canary_step(target, release, canary, host, credentials, status, lease)
    _give_up_if_overdue(release, status)
    lease.check()  # never deploy beside a worker that took the target meanwhile
    result = host.deploy(_spec(target, release, credentials))
    lease.check()
    Release.objects.filter(pk=release.pk).update(
        # A host that did not name the URL this time (Modal's rollback) keeps the one it named before.
        host_release_id=result.host_release_id,
        endpoint_url=result.endpoint_url or F("endpoint_url"),
    )
    if result.ready:
        status = host.status(target.config, credentials)
        if _serving_number(status, target, release) == release.number:
            lease.check()
            _mark_live(target.pk, release.pk, status, result.host_release_id)
            return "converged"
    return "deploying"


def _renew_stored_id(release: Release, status: HostStatus) -> None:
    """A live release's host id stored before ids were unique over time takes the one the host now serves it under
    (_legacy_served_id): kept as it was, it would match by number for good, and a deployment re-created later that
    reached that number again serving another version would be taken for it (the drift unseen)."""
    served = [s.host_release_id for s in status.serving if s.traffic_percent >= 100]
    renewed = _legacy_served_id(release, served[0]) if len(served) == 1 else ""
    if renewed:
        Release.objects.filter(pk=release.pk, host_release_id=release.host_release_id).update(host_release_id=renewed)


def _give_up_if_overdue(release: Release, status: HostStatus) -> None:
    """A release not live DEPLOY_TIMEOUT_SECONDS after its deploy began fails with what the host says: an
    endpoint waiting for capacity, or one whose health route the worker cannot reach, stayed `deploying`
    for good, with no reason anywhere."""
    times = Release.objects.filter(pk=release.pk).values_list("deploying_since", "step_started_at").first() or ()
    since = max((t for t in times if t is not None), default=None)  # a canary that fell back counts from its step
    limit = settings.DEPLOY_TIMEOUT_SECONDS
    if since is None or (timezone.now() - since).total_seconds() <= limit:
        return
    raise HostError(
        f"not live {limit} s after its deploy began (DEPLOY_TIMEOUT_SECONDS); the host says: "
        f"{status.state}{': ' + status.detail if status.detail else ''}",
        retryable=False,
    )


# --- canary steps -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Canary:
    rollout: Rollout
    beside: Release  # the release serving the rest of the traffic


def _canary_plan(target: DeploymentTarget, release: Release, status: HostStatus) -> Canary | None:
    """Canary steps apply when the target declares them and its last good release still takes traffic, to a
    release that never served: a rollback's destination (it served before) gets all traffic at once, not a
    step beside the release rolled back from, which a failing step would have handed everything back to."""
    rollout = plan(target.rollout)
    if (
        rollout is None
        or release.live_at is not None
        or not {"traffic_split", "health"} <= HOSTS[target.kind].capabilities
    ):
        return None
    beside = target.last_good_release
    serving = {s.release_number for s in status.serving if s.traffic_percent > 0}
    if beside is None or beside.pk == release.pk:
        return None
    if release.step_started_at is None and beside.number not in serving:  # mid-canary, it may be failing a check
        return None
    if beside.state != ReleaseState.LIVE:  # rolled back from (its rollback not converged yet): never beside it
        return None
    return Canary(rollout, beside)


def _canary_step(
    target, release: Release, canary: Canary, host, credentials, status: HostStatus, lease: _LeaseKeeper
) -> str:
    """Hold, advance or abort the release's canary step. The step lives on the release row, so any worker resumes it.
    Each host change and each write after a host call first checks the claim on the target still holds."""
    split = {s.release_number: s.traffic_percent for s in status.serving}
    if (
        release.step_started_at is not None
        and not split.get(canary.beside.number)
        and not host.health(target.config, credentials, canary.beside.number).up
    ):
        # The serving release's server fails HAProxy's check, which sends everything to the canary meanwhile:
        # touch nothing (its slot refuses traffic) and wait for it, within DEPLOY_TIMEOUT_SECONDS of the step. Up
        # but out of the split (HAProxy reloaded with its file's weights, a weight set by hand), the step is put
        # back below.
        _give_up_if_overdue(release, status)
        return "deploying"
    percent = release.traffic_percent if release.step_started_at else canary.rollout.steps[0]
    if release.step_started_at is None or split.get(release.number, 0) != percent:
        # Start the first step, or re-apply the current one (a worker died mid-step, or the host lost it).
        lease.check()
        result = host.deploy(
            _spec(target, release, credentials, {release.number: percent, canary.beside.number: 100 - percent})
        )
        baseline = host.health(target.config, credentials, release.number)
        lease.check()
        _begin_step(target, release, percent, baseline, result)
        return "deploying"
    held = (timezone.now() - release.step_started_at).total_seconds()
    health = host.health(target.config, credentials, release.number)
    verdict, why = judge(canary.rollout, percent, Health(**release.step_baseline), health, held)
    if verdict == "wait":
        return "deploying"
    lease.check()
    if verdict == "fail":
        host.set_traffic(target.config, credentials, {canary.beside.number: 100})
        lease.check()
        release_fail(target_id=target.pk, release_id=release.pk, reason=why)
        return "failed"
    after = canary.rollout.next_step(percent)
    if after < 100:
        host.set_traffic(target.config, credentials, {release.number: after, canary.beside.number: 100 - after})
        baseline = host.health(target.config, credentials, release.number)
        lease.check()
        _begin_step(target, release, after, baseline, None, why)
        return "deploying"
    # The last step passed: from here the host serving it alone is the rollout's end (_mid_canary).
    Release.objects.filter(pk=release.pk, state=ReleaseState.DEPLOYING).update(traffic_percent=100)
    host.set_traffic(target.config, credentials, {release.number: 100})
    status = host.status(target.config, credentials)
    if _serving_number(status, target, release) == release.number:
        lease.check()
        _mark_live(target.pk, release.pk, status)
        return "converged"
    return "deploying"


def _mid_canary(release: Release) -> bool:
    """A canary step below 100 % is under way: the host reporting the release alone then means the serving
    release's server is failing its checks (HAProxy sends everything to the slots still up), not that the rollout
    is done; only its steps' gates may make it live."""
    return (
        release.state == ReleaseState.DEPLOYING
        and release.step_started_at is not None
        and release.traffic_percent < 100
    )


def _begin_step(target, release: Release, percent: int, baseline: Health, result, passed: str = "") -> None:
    with transaction.atomic():
        target = DeploymentTarget.objects.select_for_update(no_key=True).get(pk=target.pk)
        release = Release.objects.select_for_update(no_key=True).get(pk=release.pk)
        if target.desired_release_id != release.pk or release.state != ReleaseState.DEPLOYING:
            return
        release.traffic_percent = percent
        release.step_started_at = timezone.now()
        release.step_baseline = dataclasses.asdict(baseline)
        fields = ["traffic_percent", "step_started_at", "step_baseline"]
        if result is not None:
            release.host_release_id, release.endpoint_url = result.host_release_id, result.endpoint_url
            fields += ["host_release_id", "endpoint_url"]
        release.save(update_fields=fields)
        record(
            action="release.canary_step",
            subject=release,
            actor=SYSTEM,
            reason=passed,
            after={"target": target.name, "number": release.number, "traffic_percent": percent},
        )


def targets_to_reconcile() -> list[int]:
    """Targets with a desired release: the periodic reconcile checks each for drift or unfinished work."""
    return list(DeploymentTarget.objects.filter(desired_release__isnull=False).values_list("pk", flat=True))


def served_at(*, target: DeploymentTarget, at) -> ServingPeriod | None:
    return (
        ServingPeriod.objects.filter(target=target, started_at__lte=at)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=at))
        .select_related("release__version__model")
        .order_by("-started_at")
        .first()
    )
