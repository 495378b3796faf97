"""Reads for governance, permission-filtered for the asking user."""

from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import Min, Prefetch, Q, QuerySet
from django.utils import timezone

from accounts import access
from governance.choices import Decision, PromotionState, ReleaseState
from governance.models import Approval, DeploymentTarget, Policy, PromotionRequest, Release
from governance.policy import Check, Facts, PolicyRules, evaluate, parse_rules
from lineage import selectors as lineage_selectors
from registry import cards
from registry import selectors as registry_selectors
from registry.models import ModelVersion, RegisteredModel
from registry.services import REGISTRY_URI


def targets_visible(*, user) -> QuerySet[DeploymentTarget]:
    return access.visible(user, DeploymentTarget.objects.all()).order_by("name")


def visible_model_ids(*, user, model_ids: Iterable[int]) -> set[int]:
    """Of these models, the ones the user may view (a target's viewer may not see every model it serves)."""
    ids = set(model_ids)
    if not ids:
        return set()
    return set(access.visible(user, RegisteredModel.objects.filter(pk__in=ids)).values_list("pk", flat=True))


def current_policy(*, target: DeploymentTarget, model: RegisteredModel | None = None) -> Policy:
    """The newest policy for this model on the target: a model override if one exists, else the target's."""
    if model is not None:
        override = Policy.objects.filter(target=target, model=model).order_by("-version").first()
        if override is not None:
            return override
    return Policy.objects.filter(target=target, model__isnull=True).order_by("-version").first()


def rules_of(policy: Policy) -> PolicyRules:
    return parse_rules(policy.rules)


def promotion_facts(*, version: ModelVersion) -> Facts:
    """Everything the policy rules look at, gathered for one version."""
    card = registry_selectors.latest_card(version)
    filled, license_ = frozenset(), None
    if card is not None:
        report = cards.completeness(card.content)
        filled = frozenset(s for s in cards.SECTIONS if s not in report["missing"] and s not in report["empty"])
        license_ = (card.content.get("governance") or {}).get("license") or (card.content.get("metadata") or {}).get(
            "license"
        )
    verified, detail = stored_digest_check(version)
    live_since = dict(
        Release.objects.filter(version=version, state=ReleaseState.LIVE, live_at__isnull=False)
        .values("target__stage")
        .annotate(since=Min("live_at"))
        .values_list("target__stage", "since")
    )
    lineage = _lineage_summary(version)
    signature = registry_selectors.latest_signature(version)
    return Facts(
        version_status=version.status,
        digest=version.digest,
        metrics=version.metrics,
        metric_sources=version.metric_sources,
        card_revision=card.revision if card else None,
        card_sections_filled=filled,
        card_license=license_,
        digest_verified=verified,
        digest_detail=detail,
        lineage_datasets_with_digest=lineage["datasets_with_digest"],
        code_commit=lineage["code_commit"],
        signature_verified=signature.verified if signature else None,
        signature_reason=signature.reason if signature else "",
        live_since=live_since,
        now=timezone.now(),
    )


def stored_digest_check(version: ModelVersion) -> tuple[bool | None, str]:
    """The verified-digest rule's facts: (every manifest file is stored, why); None for artifacts outside the
    registry. Stored means present under its sha256 with the declared size: the bytes were hashed on upload
    and are hashed again when a self-hosted release copies them, not on every evaluation."""
    if not version.artifact_uri.startswith(REGISTRY_URI):
        return None, f"artifacts live outside the registry ({version.artifact_uri}) and cannot be verified."
    missing, wrong = registry_selectors.stored_file_problems(version.manifest)
    if missing or wrong:
        return False, "missing: " + ", ".join(missing + wrong)
    count = len(version.manifest["files"])
    return True, f"all {count} files are stored under their sha256 (hashed on upload), with their declared sizes."


def _lineage_summary(version: ModelVersion) -> dict:
    """Dataset versions with digests upstream of the version (through the run that produced it) and
    the code commit behind it: the producing run's commit, else the version's `source.commit`.
    Read from the lineage graph for every asker alike (lineage.selectors.version_summary)."""
    return lineage_selectors.version_summary(version=version)


def counted_approvals(*, request: PromotionRequest, policy: Policy, card_revision: int | None) -> list[Approval]:
    """Approvals that still count: bound to the current digest, card revision and policy version, and
    given by someone who may still review under that policy (active, in one of its approver groups): an
    approver who leaves the group or is deactivated takes their approval with them."""
    current = (request.version.digest, card_revision, policy.pk)
    bound = [
        a
        for a in request.approvals.all()
        if a.decision == Decision.APPROVE and (a.digest, a.card_revision, a.policy_id) == current
    ]
    eligible = _still_approvers({a.user_id for a in bound}, request=request, rules=rules_of(policy))
    seen, counted = set(), []
    for approval in bound:
        if approval.user_id in eligible and approval.user_id not in seen:
            seen.add(approval.user_id)
            counted.append(approval)
    return counted


def _still_approvers(user_ids: set[int], *, request: PromotionRequest, rules: PolicyRules) -> set[int]:
    """Of these users, those who may review the request under the rules (one query for all of them): active,
    in one of the policy's approver groups, and not its requester unless the policy allows that. The one
    place the rule lives: may_review() asks it too, and only explains a refusal."""
    if not rules.requester_can_approve:
        user_ids = user_ids - {request.requester_id}
    if not user_ids or not rules.approver_groups:
        return set()
    return set(
        get_user_model()
        .objects.filter(pk__in=user_ids, is_active=True, groups__name__in=rules.approver_groups)
        .values_list("pk", flat=True)
    )


def may_review(*, user, request: PromotionRequest, rules: PolicyRules) -> tuple[bool, str]:
    """Whether the user may approve or reject, and why not. Superusers get no exemption."""
    if user and user.is_active and user.pk in _still_approvers({user.pk}, request=request, rules=rules):
        return True, ""
    if not (user and user.is_active):
        return False, "Log in to review."
    if request.requester_id == user.pk and not rules.requester_can_approve:
        return False, "You requested this promotion; the policy does not let requesters review their own."
    if not rules.approver_groups:
        return False, "The policy names no approver groups, so nobody may approve on this target."
    return False, f"Only members of {', '.join(rules.approver_groups)} may review promotions to this target."


def promotions_visible(*, user) -> QuerySet[PromotionRequest]:
    """Requests whose model and target the user may both view."""
    models = access.visible(user, RegisteredModel.objects.all())
    targets = access.visible(user, DeploymentTarget.objects.all())
    return (
        PromotionRequest.objects.filter(version__model__in=models, target__in=targets)
        .select_related("version__model", "target", "requester")
        .prefetch_related(Prefetch("approvals", queryset=Approval.objects.select_related("user")))
    )


def review_queue(*, user) -> QuerySet[PromotionRequest]:
    """Pending requests whose current policy (a model's override, else the target's) names one of my
    groups, not requested by me."""
    groups = set(user.groups.values_list("name", flat=True))
    pending = promotions_visible(user=user).filter(state=PromotionState.PENDING)
    if not groups:
        return pending.none()
    # Policies are small and few; filtering approver groups in Python keeps this portable (SQLite).
    targets, overrides = _current_policies()

    def mine(policy: Policy) -> bool:
        return bool(set(policy.rules.get("approver_groups", [])) & groups)

    def pairs(wanted: bool) -> Q:  # flat ORs: nesting one level per override overflowed the recursion limit
        chosen = [Q(target_id=t, version__model_id=m) for (t, m), policy in overrides.items() if mine(policy) == wanted]
        return Q(*chosen, _connector=Q.OR) if chosen else Q(pk__in=[])

    by_target = Q(target_id__in=[t for t, policy in targets.items() if mine(policy)]) & ~pairs(False)
    return pending.filter(by_target | pairs(True)).exclude(requester=user).order_by("created_at", "id")


def _current_policies() -> tuple[dict[int, Policy], dict[tuple[int, int], Policy]]:
    """The newest policy of each target, and of each (target, model) override."""
    targets, overrides = {}, {}
    for policy in Policy.objects.order_by("target_id", "model_id", "version"):
        if policy.model_id is None:
            targets[policy.target_id] = policy
        else:
            overrides[(policy.target_id, policy.model_id)] = policy
    return targets, overrides


def live_release(*, target: DeploymentTarget) -> Release | None:
    return target.releases.filter(state=ReleaseState.LIVE).select_related("version__model").order_by("-number").first()


@dataclass(frozen=True)
class Evaluation:
    """A version checked against a target's current policy."""

    policy: Policy
    checks: list[Check]
    card_revision: int | None

    @property
    def rules(self):
        return rules_of(self.policy)


def promotion_evaluate(*, version: ModelVersion, target: DeploymentTarget) -> Evaluation:
    policy = current_policy(target=target, model=version.model)
    facts = promotion_facts(version=version)
    return Evaluation(policy=policy, checks=evaluate(rules_of(policy), facts), card_revision=facts.card_revision)
