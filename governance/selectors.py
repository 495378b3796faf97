"""Reads for governance, permission-filtered for the asking user."""

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import F, Min, OuterRef, Prefetch, Q, QuerySet, Subquery, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from accounts import access
from governance.choices import Decision, PromotionState, ReleaseState
from governance.models import Approval, DeploymentTarget, Policy, PromotionRequest, Release
from governance.policy import REGISTRY_BYTES_KINDS, Check, Facts, PolicyRules, evaluate, parse_rules
from lineage import selectors as lineage_selectors
from registry import cards
from registry import selectors as registry_selectors
from registry.models import ModelCardRevision, ModelVersion, RegisteredModel, VersionSignature
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


DigestCheck = Callable[[ModelVersion], tuple[bool | None, str]]


def facts_many(wanted: list[tuple[ModelVersion, PolicyRules | None]], *, digest_check: DigestCheck) -> dict[int, Facts]:
    """version id -> the facts its rules look at, for many versions in a fixed number of queries: the one
    place each fact is gathered, for one version (promotion_evaluate, the trail) and for a page
    (ui_selectors.evaluations_many). Rules None gathers every fact (the trail checks one version against several
    policies).

    The verified-digest and lineage facts cost a storage HEAD per file and a graph walk: they are gathered
    only for versions with a rule that looks at them (None: every rule), the walk once for all of them.
    `digest_check` answers the verified-digest rule: stored_digest_check asks the storage, the review queue's
    registered_digest_check states what registration established, without I/O."""
    versions = {v.pk: v for v, _ in wanted}
    digest_for = {v.pk for v, rules in wanted if rules is None or rules.require_verified_digest}
    lineage_for = [versions[pk] for pk in {v.pk for v, rules in wanted if rules is None or rules.require_lineage}]
    ids = list(versions)
    latest_cards, signatures, live = _latest_cards(ids), _latest_signatures(ids), _live_since(ids)
    lineage = lineage_selectors.version_summaries(lineage_for)
    now = timezone.now()
    result = {}
    for pk, version in versions.items():
        card, signature = latest_cards.get(pk), signatures.get(pk)
        filled, license_, readme_license = _card_facts(card)
        verified, detail = None, ""
        if pk in digest_for:
            verified, detail = digest_check(version)
        summary = lineage.get(pk, {"datasets_with_digest": 0, "code_commit": None})
        result[pk] = Facts(
            version_status=version.status,
            digest=version.digest,
            metrics=version.metrics,
            metric_sources=version.metric_sources,
            card_revision=card.revision if card else None,
            card_sections_filled=filled,
            card_license=license_,
            card_readme_license=readme_license,
            digest_verified=verified,
            digest_detail=detail,
            lineage_datasets_with_digest=summary["datasets_with_digest"],
            code_commit=summary["code_commit"],
            signature_verified=signature.verified if signature else None,
            signature_reason=signature.reason if signature else "",
            live_since=live.get(pk, {}),
            now=now,
        )
    return result


def _card_facts(card: ModelCardRevision | None) -> tuple[frozenset[str], str | None, str | None]:
    """The sections a card fills in, the license it states (governance.license, else the README's), and the
    README's license when it names another one than governance.license (None when they agree)."""
    if card is None:
        return frozenset(), None, None
    report = cards.completeness(card.content)
    filled = frozenset(s for s in cards.SECTIONS if s not in report["missing"] and s not in report["empty"])
    stated = (card.content.get("governance") or {}).get("license")
    metadata = card.content.get("metadata") or {}
    readme = named = metadata.get("license")
    if named == "other" and metadata.get("license_name"):  # the Hub's way to name a license not on its list
        named = metadata["license_name"]
    # SPDX ids are case-insensitive: Apache-2.0 in one place and the Hub's apache-2.0 in the other agree.
    conflict = named if stated and named and named.casefold() != stated.casefold() else None
    return filled, stated or readme, conflict


def _latest_cards(version_ids: list[int]) -> dict[int, ModelCardRevision]:
    newest = ModelCardRevision.objects.filter(version=OuterRef("version")).order_by("-revision").values("revision")[:1]
    rows = ModelCardRevision.objects.filter(version_id__in=version_ids, revision=Subquery(newest))
    return {card.version_id: card for card in rows}


def _latest_signatures(version_ids: list[int]) -> dict[int, VersionSignature]:
    newest = (
        VersionSignature.objects.filter(version=OuterRef("version")).order_by("-created_at", "-id").values("id")[:1]
    )
    rows = VersionSignature.objects.filter(version_id__in=version_ids, id=Subquery(newest)).defer("bundle")
    return {sig.version_id: sig for sig in rows}


def _live_since(version_ids: list[int]) -> dict[int, dict]:
    """version id -> {stage: when it went live there}, over its live releases."""
    result: dict[int, dict] = defaultdict(dict)
    rows = (
        Release.objects.filter(version_id__in=version_ids, state=ReleaseState.LIVE, live_at__isnull=False)
        .values("version_id", "target__stage")
        .annotate(since=Min("live_at"))
    )
    for row in rows:
        result[row["version_id"]][row["target__stage"]] = row["since"]
    return result


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


def registered_digest_check(version: ModelVersion) -> tuple[bool | None, str]:
    """The verified-digest rule's facts as registration left them, without asking the storage (the review
    queue: a HEAD per file and row would grow with the page). Registration refuses a registry:// version
    unless every file is stored under its sha256 with the declared size (registry.services), and the registry
    deletes no blob, so this is the last known state; the request page and the approval ask the storage."""
    if not version.artifact_uri.startswith(REGISTRY_URI):
        return stored_digest_check(version)  # outside the registry: answered without I/O
    count = len(version.manifest["files"])
    return True, (
        f"all {count} files were stored under their sha256 (hashed on upload), with their declared sizes, when "
        "the version was registered; the request page and approval check the storage again."
    )


def counted_approvals(*, request: PromotionRequest, policy: Policy, card_revision: int | None) -> list[Approval]:
    """Approvals that still count: bound to the current digest, card revision and policy version, and
    given by someone who may still review under that policy (active, in one of its approver groups, may view
    the model and the target): an approver who leaves the group, is deactivated or loses view of either takes
    their approval with them."""
    bound = [
        a for a in request.approvals.all() if is_bound(a, request=request, policy=policy, card_revision=card_revision)
    ]
    eligible = _still_approvers({a.user_id for a in bound}, request=request, rules=rules_of(policy))
    seen, counted = set(), []
    for approval in bound:
        if approval.user_id in eligible and approval.user_id not in seen:
            seen.add(approval.user_id)
            counted.append(approval)
    return counted


def is_bound(approval: Approval, *, request: PromotionRequest, policy: Policy, card_revision: int | None) -> bool:
    """Whether an approval is bound to the request as it is now: an approve given on its current digest, card
    revision and policy version. The one place the rule lives: counted_approvals() asks it, then whether the
    approver may still review; the review queue asks it of its reader, who may review every request listed."""
    current = (request.version.digest, card_revision, policy.pk)
    return (
        approval.decision == Decision.APPROVE
        and (approval.digest, approval.card_revision, approval.policy_id) == current
    )


def _still_approvers(user_ids: set[int], *, request: PromotionRequest, rules: PolicyRules) -> set[int]:
    """Of these users, those who may review the request under the rules (two queries for all of them): active,
    in one of the policy's approver groups, not its requester unless the policy allows that, and allowed to view
    its model and its target (as the request itself: promotions_visible). The one place the rule lives:
    may_review() asks it too, and only explains a refusal."""
    if not rules.requester_can_approve:
        user_ids = user_ids - {request.requester_id}
    if not user_ids or not rules.approver_groups:
        return set()
    members = (
        get_user_model()
        .objects.filter(pk__in=user_ids, is_active=True, groups__name__in=rules.approver_groups)
        .distinct()
        .only("pk", "is_active", "is_superuser")
    )
    return access.may_view_all(list(members), (request.version.model, request.target))


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
    if not user.groups.filter(name__in=rules.approver_groups).exists():
        return False, f"Only members of {', '.join(rules.approver_groups)} may review promotions to this target."
    return False, "You may no longer view this request's model or target, so you may not review it."


def promotions_visible(*, user) -> QuerySet[PromotionRequest]:
    """Requests whose model and target the user may both view."""
    models = access.visible(user, RegisteredModel.objects.all())
    targets = access.visible(user, DeploymentTarget.objects.all())
    return (
        PromotionRequest.objects.filter(version__model__in=models, target__in=targets)
        .select_related("version__model", "target", "requester")
        .prefetch_related(Prefetch("approvals", queryset=Approval.objects.select_related("user", "policy")))
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
    for policy in newest_policies():
        if policy.model_id is None:
            targets[policy.target_id] = policy
        else:
            overrides[(policy.target_id, policy.model_id)] = policy
    return targets, overrides


def newest_policies() -> QuerySet[Policy]:
    """Only the newest version of each target's policy and of each (target, model) override, picked in SQL
    (a window function, PostgreSQL and SQLite alike; its partition keeps a NULL model as one group): older
    versions are kept forever, for the approvals bound to them, and need not be read to find the current one.
    Further filters apply before the pick, so they must keep or drop whole (target, model) groups."""
    newest_first = Window(RowNumber(), partition_by=[F("target_id"), F("model_id")], order_by=F("version").desc())
    return Policy.objects.annotate(newest=newest_first).filter(newest=1)


def policy_overrides(*, user, targets: Iterable[DeploymentTarget]) -> QuerySet[Policy]:
    """The model overrides in force on these targets (the newest version of each), of models the user may view
    only: an override names its model, so one the user may not view is neither shown nor counted. One query for
    any number of targets (the API's target list), by target then model name. An override wins outright over the
    target's policy for its model (current_policy), so the target's readers must see it there."""
    return (
        newest_policies()
        # Both filters keep or drop whole (target, model) groups, as newest_policies() requires.
        .filter(
            target_id__in=[t.pk for t in targets],
            model__in=access.visible(user, RegisteredModel.objects.all()),
        )
        .select_related("model", "created_by")
        .order_by("target_id", "model__namespace", "model__name")
    )


def policy_overrides_by_target(*, user, targets: list[DeploymentTarget]) -> dict[int, list[Policy]]:
    """target id -> policy_overrides() of it, for every target given (an empty list where there are none)."""
    result: dict[int, list[Policy]] = {t.pk: [] for t in targets}
    if targets:
        for policy in policy_overrides(user=user, targets=targets):
            result[policy.target_id].append(policy)
    return result


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


def promotion_evaluate(
    *, version: ModelVersion, target: DeploymentTarget, storage: tuple[bool | None, str] | None = None
) -> Evaluation:
    """The version's checks under the target's current policy. `storage`: the verified-digest rule's answer when
    the caller asked the storage before taking its locks (storage_before_locks); without it the storage is
    asked here, if the rules look at it."""
    policy = current_policy(target=target, model=version.model)
    rules = rules_of(policy)
    check = stored_digest_check if storage is None else lambda _: storage
    if target.kind not in REGISTRY_BYTES_KINDS:  # the rule fails there whatever the storage holds: ask it nothing
        check = _not_asked
    facts = facts_many([(version, rules)], digest_check=check)[version.pk]
    checks = evaluate(rules, facts, target_kind=target.kind)
    return Evaluation(policy=policy, checks=checks, card_revision=facts.card_revision)


def _not_asked(version: ModelVersion) -> tuple[bool | None, str]:
    return None, ""


def storage_before_locks(*, version: ModelVersion, target: DeploymentTarget) -> tuple[bool | None, str] | None:
    """The storage's answer for the verified-digest rule, asked before a write takes its row locks when the
    current policy looks at it (else None): the blobs do not change with the rows those locks protect, and a
    HEAD per file under the target's lock held back its reconciler and every other review of it. A policy
    changed in between is read again under the locks, where promotion_evaluate asks for itself if it must."""
    if target.kind not in REGISTRY_BYTES_KINDS:  # promotion_evaluate asks nothing of the storage there
        return None
    rules = rules_of(current_policy(target=target, model=version.model))
    return stored_digest_check(version) if rules.require_verified_digest else None
