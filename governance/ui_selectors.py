"""Reads for the server-rendered UI, in batches so a page costs the same number of queries at any length.

The review queue shows a failing-rule count per request. `evaluate_many()` answers it for a whole page
with a fixed number of queries, gathering the facts with the same `selectors.facts_many()` as
`selectors.promotion_evaluate()` and handing them to the same pure `policy.evaluate()`; only the
verified-digest fact differs, as registration left it instead of asked of the storage per row
(selectors.registered_digest_check). tests/ui/test_queries.py checks that both give the same checks.
"""

from collections import defaultdict
from collections.abc import Iterable

from django.db.models import Q, QuerySet

from governance import selectors
from governance.choices import PromotionState, ReleaseState
from governance.models import DeploymentTarget, Policy, PromotionRequest, Release
from governance.policy import Check, evaluate, parse_rules
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


def evaluate_many(pairs: list[tuple[ModelVersion, DeploymentTarget]]) -> dict[tuple[int, int], list[Check]]:
    """(version_id, target_id) -> every policy check, for many pairs in a fixed number of queries."""
    if not pairs:
        return {}
    policies = current_policies((t.pk, v.model_id) for v, t in pairs)
    rules = {(v.pk, t.pk): parse_rules(policies[(t.pk, v.model_id)].rules) for v, t in pairs}
    facts = selectors.facts_many(
        [(v, rules[(v.pk, t.pk)]) for v, t in pairs], digest_check=selectors.registered_digest_check
    )
    kinds = {t.pk: t.kind for _, t in pairs}
    return {
        (version_id, target_id): evaluate(r, facts[version_id], target_kind=kinds[target_id])
        for (version_id, target_id), r in rules.items()
    }


def queue_rows(requests: list[PromotionRequest]) -> list[dict]:
    """One row per request of a queue page: the request and how many of its rules fail now."""
    checks = evaluate_many([(r.version, r.target) for r in requests])
    rows = []
    for request in requests:
        failing = [c for c in checks[(request.version_id, request.target_id)] if not c.passed]
        rows.append({"request": request, "failing": failing})
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
    return target.releases.select_related("version__model", "promotion", "created_by").order_by("-number")


def pending_for_target(*, user, target: DeploymentTarget) -> QuerySet[PromotionRequest]:
    return (
        selectors.promotions_visible(user=user)
        .filter(target=target, state=PromotionState.PENDING)
        .order_by("created_at", "id")
    )
