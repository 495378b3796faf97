"""Reads for the server-rendered UI, in batches so a page costs the same number of queries at any length.

The review queue shows the failing rules of each request. `evaluations_many()` answers it for a whole page
with a fixed number of queries, gathering the facts with the same `selectors.facts_many()` as
`selectors.promotion_evaluate()` and handing them to the same pure `policy.evaluate()`; only the
verified-digest fact differs, as registration left it instead of asked of the storage per row
(selectors.registered_digest_check). tests/ui/test_queries.py checks that both give the same checks.
"""

from collections import defaultdict
from collections.abc import Iterable

from django.db.models import Case, CharField, JSONField, OuterRef, Q, QuerySet, Subquery, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast

from audit.models import AuditEvent
from governance import selectors
from governance.choices import PromotionState, ReleaseState
from governance.models import DeploymentTarget, Policy, PromotionRequest, Release
from governance.policy import evaluate, parse_rules
from registry.models import ModelVersion


def current_policies(pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], Policy]:
    """(target_id, model_id) -> the policy `selectors.current_policy()` would pick, in one query."""
    pairs = set(pairs)
    target_ids = {t for t, _ in pairs}
    model_ids = {m for _, m in pairs}
    newest = {
        (policy.target_id, policy.model_id): policy
        for policy in selectors.newest_policies().filter(
            Q(model__isnull=True) | Q(model_id__in=model_ids), target_id__in=target_ids
        )
    }
    return {(t, m): newest.get((t, m)) or newest.get((t, None)) for t, m in pairs}


def evaluations_many(
    pairs: list[tuple[ModelVersion, DeploymentTarget]],
) -> dict[tuple[int, int], selectors.Evaluation]:
    """(version_id, target_id) -> what promotion_evaluate() answers for the pair (the policy, every check, the
    card revision), for many pairs in a fixed number of queries."""
    if not pairs:
        return {}
    policies = current_policies((t.pk, v.model_id) for v, t in pairs)
    chosen = {(v.pk, t.pk): policies[(t.pk, v.model_id)] for v, t in pairs}
    rules = {pair: parse_rules(policy.rules) for pair, policy in chosen.items()}
    facts = selectors.facts_many(
        [(v, rules[(v.pk, t.pk)]) for v, t in pairs], digest_check=selectors.registered_digest_check
    )
    kinds = {t.pk: t.kind for _, t in pairs}
    return {
        (version_id, target_id): selectors.Evaluation(
            policy=chosen[(version_id, target_id)],
            checks=evaluate(r, facts[version_id], target_kind=kinds[target_id]),
            card_revision=facts[version_id].card_revision,
        )
        for (version_id, target_id), r in rules.items()
    }


def queue_rows(requests: list[PromotionRequest]) -> list[dict]:
    """One row per request of a queue page: the request, the rules that fail now, and who approved it as it is
    now (`approved_by`: user ids, selectors.is_bound() of the prefetched approvals, no query). The page marks
    its reader's own: the queue lists only requests its reader may review, so their bound approval counts."""
    evaluations = evaluations_many([(r.version, r.target) for r in requests])
    rows = []
    for request in requests:
        e = evaluations[(request.version_id, request.target_id)]
        rows.append(
            {
                "request": request,
                "failing": [c for c in e.checks if not c.passed],
                "approved_by": {
                    a.user_id
                    for a in request.approvals.all()
                    if selectors.is_bound(a, request=request, policy=e.policy, card_revision=e.card_revision)
                },
            }
        )
    return rows


def serving_by_version(*, user, versions: list[ModelVersion]) -> dict[int, list[Release]]:
    """version id -> its live releases on targets the user may view."""
    targets = selectors.targets_visible(user=user)
    releases = (
        Release.objects.filter(version__in=[v.pk for v in versions], state=ReleaseState.LIVE, target__in=targets)
        .select_related("target")
        .order_by("target__name")
    )
    result: dict[int, list[Release]] = defaultdict(list)
    for release in releases:
        result[release.version_id].append(release)
    return result


def version_promotions(*, user, version: ModelVersion) -> QuerySet[PromotionRequest]:
    """Promotion requests of one version (newest first) on targets the user may view."""
    return selectors.promotions_visible(user=user).filter(version=version).order_by("-created_at", "-id")


def live_by_target(targets: list[DeploymentTarget]) -> dict[int, Release]:
    """target id -> its live release with the highest number (as `selectors.live_release()`)."""
    result = {}
    releases = (
        Release.objects.filter(target__in=[t.pk for t in targets], state=ReleaseState.LIVE)
        .select_related("version__model")
        .order_by("target_id", "number")
    )
    for release in releases:
        result[release.target_id] = release
    return result


def target_releases(*, target: DeploymentTarget) -> QuerySet[Release]:
    """The target's releases, newest first. A rolled-back one carries who rolled it back and why
    (`rolled_back_by`, `rolled_back_reason`; None on the others): the newest rollback event of the target that
    moved away from it (deployment.deployment_rollback records it on the target, `after.from` the release's
    number; the release row keeps neither), read in the same query as the page."""
    rollbacks = (
        AuditEvent.objects.filter(
            action="release.rolled_back", subject_type=DeploymentTarget._meta.label_lower, subject_id=str(target.pk)
        )
        .annotate(from_number=KeyTextTransform("from", Cast("after", JSONField())))
        .filter(from_number=Cast(OuterRef("number"), CharField()))
        .order_by("-seq")
    )

    def of_rollback(field: str) -> Case:
        return Case(When(state=ReleaseState.ROLLED_BACK, then=Subquery(rollbacks.values(field)[:1])))

    return (
        target.releases.select_related("version__model", "promotion", "created_by")
        .annotate(rolled_back_by=of_rollback("actor_username"), rolled_back_reason=of_rollback("reason"))
        .order_by("-number")
    )


def pending_for_target(*, user, target: DeploymentTarget) -> QuerySet[PromotionRequest]:
    return (
        selectors.promotions_visible(user=user)
        .filter(target=target, state=PromotionState.PENDING)
        .order_by("created_at", "id")
    )
