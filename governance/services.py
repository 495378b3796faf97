"""Every write in governance: targets, policies, promotion requests and their reviews.

Each service runs in one transaction, locks the row whose state it changes, refuses moves the
current state does not allow (Conflict -> 409) or the actor may not make (Forbidden -> 403), and
writes its audit event in the same transaction.
"""

import logging
import re
from datetime import timedelta

from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.utils import timezone
from guardian.shortcuts import assign_perm

from accounts import access
from audit.services import record
from core.errors import Conflict, Forbidden, InvalidInput
from core.etags import check_if_match
from governance import deployment, free_text, selectors
from governance.choices import PROMOTION_TRANSITIONS, Decision, PromotionState, ReleaseState
from governance.hosts import HOSTS
from governance.hosts.base import HostError
from governance.models import Approval, DeploymentTarget, Policy, PromotionRequest, Release
from governance.policy import failing, parse_new_rules
from governance.rollout import parse_rollout
from registry.models import ModelVersion, RegisteredModel
from registry.services import _validate_slug

log = logging.getLogger(__name__)

CREDENTIALS_REF = re.compile(r"^(env|secret):[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
TARGET_OWNER_PERMS = ("view_deploymenttarget", "manage_deploymenttarget", "deploy_deploymenttarget")


def _validate_rules(rules: dict) -> dict:
    parsed = parse_new_rules(rules)
    unknown = sorted(
        set(parsed.approver_groups)
        - set(Group.objects.filter(name__in=parsed.approver_groups).values_list("name", flat=True))
    )
    if unknown:
        raise InvalidInput(
            f"policy.approver_groups: no group named {', '.join(unknown)}.",
            detail={"policy.approver_groups": [f"Unknown group(s): {', '.join(unknown)}."]},
        )
    return parsed.as_dict()


def target_create(
    *,
    actor,
    name: str,
    kind: str,
    stage: str,
    config: dict,
    policy: dict,
    credentials_ref: str = "",
    description: str = "",
    rollout: dict | None = None,
) -> DeploymentTarget:
    _validate_slug(name, "name")
    _validate_slug(stage, "stage")
    if kind not in HOSTS:
        raise InvalidInput(f"kind '{kind}' is not one of {', '.join(HOSTS)}.", detail={"kind": ["Unknown kind."]})
    config = HOSTS[kind].validate_config(config)
    rollout = parse_rollout(rollout, capabilities=HOSTS[kind].capabilities, kind=kind)
    if credentials_ref and not CREDENTIALS_REF.match(credentials_ref):
        raise InvalidInput(
            "credentials_ref must name where the credential lives, as env:VAR_NAME or secret:name — "
            "never the credential itself.",
            detail={"credentials_ref": ["Use env:VAR_NAME or secret:name."]},
        )
    if credentials_ref and (problem := deployment.credentials_ref_problem(credentials_ref)):
        raise InvalidInput(problem, detail={"credentials_ref": [problem]})
    rules = _validate_rules(policy)
    try:
        with transaction.atomic():
            _check_resources_free(kind, config, credentials_ref)
            target = DeploymentTarget.objects.create(
                name=name,
                kind=kind,
                stage=stage,
                config=config,
                credentials_ref=credentials_ref,
                rollout=rollout,
                description=description,
                created_by=actor,
            )
            Policy.objects.create(target=target, version=1, rules=rules, created_by=actor)
            for perm in TARGET_OWNER_PERMS:
                assign_perm(perm, actor, target)
            record(
                action="target.created",
                subject=target,
                actor=actor,
                after={
                    "name": name,
                    "kind": kind,
                    "stage": stage,
                    "config": config,
                    "credentials_ref": credentials_ref,
                    "rollout": rollout,
                    "policy": {"version": 1, "rules": rules},
                },
            )
    except IntegrityError:
        raise Conflict(f"A target named {name} already exists.", code="already_exists") from None
    return target


def _check_resources_free(kind: str, config: dict, credentials_ref: str) -> None:
    """Two targets on one host resource (an HAProxy backend, a Replicate deployment...) would deploy over
    each other: a staging approval would move production traffic. Creations are serialized for the check."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext('governance.target_create'))")
    wanted = HOSTS[kind].resources(config, credentials_ref)
    for other in DeploymentTarget.objects.filter(kind=kind).only("name", "config", "credentials_ref"):
        try:
            held = HOSTS[kind].resources(other.config, other.credentials_ref)
        except (HostError, InvalidInput, ValueError) as exc:
            # Saved before a check its config now fails (an address the stricter parser refuses): it cannot deploy
            # as it is, and it must not make every later target's creation fail.
            log.warning("target %s: its config no longer validates (%s); not compared for shared resources", other, exc)
            continue
        shared = wanted & held
        if shared:
            raise Conflict(
                f"Target {other.name} already controls the {min(shared)}; two targets on it would deploy over "
                "each other. Give this target its own (config), or use that target.",
                code="host_resource_in_use",
                detail={"target": other.name, "resources": sorted(shared)},
            )


def policy_set(
    *, actor, target: DeploymentTarget, rules: dict, model: RegisteredModel | None = None, if_match: str | None = None
) -> Policy:
    """A new version of the target's policy (or of its override for one model). Old approvals stop counting.
    The rules already in force there are that policy, returned as it is: nothing is written, and the approvals
    given under it keep counting (a retry whose first answer was lost, or a deploy script that puts its policy
    every run). With `if_match` (an If-Match header) other rules only if the policy in force there is still the
    one that ETag was read from: rules are sent whole, so an edit of an older read would undo the change made since."""
    rules = _validate_rules(rules)
    with transaction.atomic():
        DeploymentTarget.objects.select_for_update(no_key=True).get(pk=target.pk)  # serializes version numbers
        in_force = selectors.current_policy(target=target, model=model)  # every target has one from its creation on
        # Only the scope's own: the target's rules put as a model's override make the override (a policy of its own).
        if in_force.model_id == (model.pk if model else None) and selectors.rules_of(in_force).as_dict() == rules:
            return in_force  # already the policy (RFC 9110, 13.1.1 for If-Match)
        if if_match is not None:
            check_if_match(if_match, in_force.etag, f"The policy of {target}" + (f" for {model}" if model else ""))
        previous = Policy.objects.filter(target=target, model=model).order_by("-version").first()
        # Numbered per target, overrides included: a reviewer's `seen.policy_version` then names one policy,
        # and an override created while they read the target's counts as a change (both were "version 1").
        last = Policy.objects.filter(target=target).aggregate(v=Max("version"))["v"] or 0
        policy = Policy.objects.create(target=target, model=model, version=last + 1, rules=rules, created_by=actor)
        record(
            action="policy.changed",
            subject=target,
            actor=actor,
            before={"version": previous.version, "rules": previous.rules, "model": str(model) if model else None}
            if previous
            else None,
            after={"version": policy.version, "rules": rules, "model": str(model) if model else None},
        )
    return policy


def promotion_request(*, actor, version: ModelVersion, target: DeploymentTarget, reason: str = "") -> PromotionRequest:
    """Open a request. Failing rules don't stop it (reviewers see them); they block approval until fixed."""
    free_text.check("reason", reason)
    # An overdue request the periodic expiry has not reached yet is expired first (in lock order: promotion,
    # then target), not answered with already_pending while its page says a new one may be opened.
    overdue = PromotionRequest.objects.filter(
        version=version, target=target, state=PromotionState.PENDING, expires_at__lte=timezone.now()
    ).values_list("pk", flat=True)
    for request_id in overdue:
        with transaction.atomic():
            _locked_pending(request_id)
    storage = selectors.storage_before_locks(version=version, target=target)
    with transaction.atomic():
        ModelVersion.objects.select_for_update(no_key=True).get(
            pk=version.pk
        )  # one open request per version and target
        # The target too, before the audit event below takes the chain head: a policy that needs no
        # approvals starts a release on the target at once (lock order in docs/architecture.md).
        locked = DeploymentTarget.objects.select_for_update(no_key=True).get(pk=target.pk)
        open_request = PromotionRequest.objects.filter(
            version=version, target=target, state=PromotionState.PENDING
        ).first()
        if open_request is not None:
            raise Conflict(
                f"Promotion #{open_request.pk} of {version} to {target} is already pending.",
                code="already_pending",
                detail={"id": open_request.pk},
            )
        _check_not_desired(version, locked)
        evaluation = selectors.promotion_evaluate(version=version, target=target, storage=storage)
        rules = evaluation.rules
        request = PromotionRequest.objects.create(
            version=version,
            target=target,
            requester=actor,
            reason=reason,
            host_revision=deployment.host_revision_of(version),
            expires_at=timezone.now() + timedelta(hours=rules.request_expiry_hours),
        )
        record(
            action="promotion.requested",
            subject=request,
            actor=actor,
            reason=reason,
            after={
                "model": str(version.model),
                "version": version.number,
                "digest": version.digest,
                "host_revision": request.host_revision,
                "target": target.name,
                "policy_version": evaluation.policy.version,
                "failing_rules": [c.rule for c in failing(evaluation.checks)],
            },
        )
        if rules.approvals_required == 0 and not failing(evaluation.checks):
            _approve(request, evaluation, actor=actor, counted=0, reason="policy requires no approvals")
    return request


def _check_not_desired(version: ModelVersion, target: DeploymentTarget) -> None:
    """Refuse to request what the target is already set to serve: the same version with the same host revision as
    its desired release on its way or live. Asked of `target` as read under its lock, so a retry whose first answer
    was lost (approved at once, under a policy needing no approvals) is answered with that request and does not
    release the version a second time. A failed release, or another host revision (tags are editable), may be
    requested."""
    if target.desired_release_id is None:
        return
    desired = (
        Release.objects.filter(
            pk=target.desired_release_id,
            version=version,
            state__in=(ReleaseState.PENDING, ReleaseState.DEPLOYING, ReleaseState.LIVE),
        )
        .only("number", "state", "host_revision", "promotion_id")
        .first()
    )
    if desired is None or desired.promotion_id is None or desired.host_revision != deployment.host_revision_of(version):
        return
    raise Conflict(
        f"{version} is already the desired release of {target} (release {desired.number}, {desired.state}), made by "
        f"promotion #{desired.promotion_id}; nothing was requested.",
        code="already_desired",
        detail={"id": desired.promotion_id, "release": desired.number, "state": desired.state},
    )


def _transition(request: PromotionRequest, state: str, *, actor, reason: str = "", extra: dict | None = None):
    allowed = PROMOTION_TRANSITIONS.get(PromotionState(request.state), set())
    if state not in allowed:
        raise Conflict(
            f"Promotion #{request.pk} is {request.state}; it cannot become {state}.",
            code="invalid_state",
            detail={"state": request.state},
        )
    before = request.state
    request.state = state
    request.decided_at = timezone.now()
    request.save(update_fields=["state", "decided_at"])
    record(
        action=f"promotion.{state}",
        subject=request,
        actor=actor,
        reason=reason,
        before={"state": before},
        after={"state": state, **(extra or {})},
    )
    if state == PromotionState.APPROVED:  # hand over to deployment: the target's desired state changes
        deployment.release_start(actor=actor, promotion=request)


def _locked_pending(request_id: int) -> tuple[PromotionRequest, bool]:
    """Lock the request and its target. Returns (request, expired_now): an overdue pending request is
    expired here.

    The target is locked now, before any audit event is appended, because an approval may start a
    release on it: lock order is promotion -> target -> release -> audit chain head (record() last),
    the order the reconciler follows too. Locking the target only in release_start, after the approval's
    own audit events had taken the chain head, deadlocked with a reconcile holding the target
    (tests/governance/test_lock_order.py).
    """
    request = (
        PromotionRequest.objects.select_for_update(no_key=True, of=("self", "target"))
        .select_related("version__model", "target")
        .get(pk=request_id)
    )
    if request.state == PromotionState.PENDING and request.expires_at <= timezone.now():
        _transition(request, PromotionState.EXPIRED, actor="system:expiry", reason="request expired")
        return request, True
    return request, False


CHANGED_SINCE_REVIEW = (
    "The version, its model card or the policy changed while you were reviewing. Look at the request again "
    "before you decide."
)


def _check_seen(request: PromotionRequest, evaluation, seen: dict | None) -> None:
    """A reviewer's decision is about what they looked at: when they say what that was (digest, card
    revision, policy version), it must still be current under the request's lock, or nothing is recorded."""
    current = {
        "digest": request.version.digest,
        "card_revision": evaluation.card_revision,
        "policy_version": evaluation.policy.version,
    }
    changed = {k: {"seen": v, "current": current[k]} for k, v in (seen or {}).items() if v != current[k]}
    if changed:
        raise Conflict(CHANGED_SINCE_REVIEW, code="changed_since_review", detail=changed)


def _review(*, actor, request_id: int, decision: str, comment: str, seen: dict | None) -> PromotionRequest:
    free_text.check("comment", comment)
    unlocked = PromotionRequest.objects.select_related("version__model", "target").filter(pk=request_id).first()
    storage = None
    if unlocked is not None and unlocked.state == PromotionState.PENDING:
        storage = selectors.storage_before_locks(version=unlocked.version, target=unlocked.target)
    with transaction.atomic():
        request, expired = _locked_pending(request_id)
        if not expired:
            _review_locked(actor=actor, request=request, decision=decision, comment=comment, seen=seen, storage=storage)
    if expired:  # the expiry is committed; the review is refused
        raise Conflict(f"Promotion #{request_id} expired before it was decided.", code="expired")
    return request


def _review_locked(
    *, actor, request: PromotionRequest, decision: str, comment: str, seen: dict | None, storage: tuple | None
) -> None:
    if request.state != PromotionState.PENDING:
        raise Conflict(
            f"Promotion #{request.pk} is {request.state}, not pending.",
            code="invalid_state",
            detail={"state": request.state},
        )
    evaluation = selectors.promotion_evaluate(version=request.version, target=request.target, storage=storage)
    rules = evaluation.rules
    allowed, why = selectors.may_review(user=actor, request=request, rules=rules)
    if not allowed:
        raise Forbidden(why)
    _check_seen(request, evaluation, seen)
    counted = selectors.counted_approvals(
        request=request, policy=evaluation.policy, card_revision=evaluation.card_revision
    )
    if decision == Decision.APPROVE:
        blocking = failing(evaluation.checks)
        if blocking:
            raise Conflict(
                "Approval is blocked by failing rules: " + "; ".join(f"{c.rule}: {c.reason}" for c in blocking),
                code="rules_failing",
                detail={"failing": [c.__dict__ for c in blocking]},
            )
        if any(a.user_id == actor.pk for a in counted):
            if len(counted) < rules.approvals_required:
                raise Conflict(f"You already approved promotion #{request.pk}.", code="already_approved")
            # The quorum came back without a new approval (an approver rejoined an approver group or was
            # reactivated): nothing would ever decide the request, so a counted approver's approve settles it.
            _approve(request, evaluation, actor=actor, counted=len(counted), reason=comment)
            return
    Approval.objects.create(
        request=request,
        user=actor,
        decision=decision,
        comment=comment,
        digest=request.version.digest,
        card_revision=evaluation.card_revision,
        policy=evaluation.policy,
    )
    record(
        action="promotion.approval" if decision == Decision.APPROVE else "promotion.rejection",
        subject=request,
        actor=actor,
        reason=comment,
        after={
            "decision": decision,
            "digest": request.version.digest,
            "card_revision": evaluation.card_revision,
            "policy_version": evaluation.policy.version,
        },
    )
    if decision == Decision.REJECT:
        _transition(request, PromotionState.REJECTED, actor=actor, reason=comment)
    elif len(counted) + 1 >= rules.approvals_required:
        _approve(request, evaluation, actor=actor, counted=len(counted) + 1)


def _approve(request: PromotionRequest, evaluation, *, actor, counted: int, reason: str = "") -> None:
    """Approved, audited with the quorum and the policy version it was reached under (the approvals name theirs,
    but a quorum that came back, or no approval needed, has no approval of its own to name it)."""
    required, version = evaluation.rules.approvals_required, evaluation.policy.version
    extra = {"approvals": counted, "required": required, "policy_version": version}
    _transition(request, PromotionState.APPROVED, actor=actor, reason=reason, extra=extra)


def promotion_approve(*, actor, request_id: int, comment: str = "", seen: dict | None = None) -> PromotionRequest:
    """seen: what the reviewer looked at, any of {"digest", "card_revision", "policy_version"} (409 if changed)."""
    return _review(actor=actor, request_id=request_id, decision=Decision.APPROVE, comment=comment, seen=seen)


def promotion_reject(*, actor, request_id: int, comment: str, seen: dict | None = None) -> PromotionRequest:
    if not comment or not comment.strip():
        raise InvalidInput(
            "A rejection needs a comment that tells the requester what to change.",
            detail={"comment": ["Required when rejecting."]},
        )
    return _review(actor=actor, request_id=request_id, decision=Decision.REJECT, comment=comment, seen=seen)


def promotion_cancel(*, actor, request_id: int, reason: str = "") -> PromotionRequest:
    free_text.check("reason", reason)
    with transaction.atomic():
        request, expired = _locked_pending(request_id)
        if request.requester_id != actor.pk and not access.has_perm(actor, "manage_deploymenttarget", request.target):
            raise Forbidden("Only the requester or a manager of the target may cancel a promotion request.")
        if not expired:
            _transition(request, PromotionState.CANCELLED, actor=actor, reason=reason)
    if expired:  # the expiry is committed, as what happened first; there is nothing left to cancel
        raise Conflict(f"Promotion #{request_id} expired before it was cancelled.", code="expired")
    return request


def promotions_expire(*, now=None) -> int:
    """Expire every overdue pending request (run periodically). Returns how many expired."""
    now = now or timezone.now()
    count = 0
    for request_id in PromotionRequest.objects.filter(state=PromotionState.PENDING, expires_at__lte=now).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            _, expired = _locked_pending(request_id)
            count += expired
    return count
