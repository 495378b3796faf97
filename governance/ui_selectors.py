"""Reads for the server-rendered UI, in batches so a page costs the same number of queries at any length.

The review queue shows a failing-rule count per request. `selectors.promotion_evaluate()` answers
that for one version with several queries; `evaluate_many()` answers it for a whole page with a
fixed number, gathering the same facts and handing them to the same pure `policy.evaluate()`.
tests/ui/test_queries.py checks that both give the same checks.
"""

from collections import defaultdict
from collections.abc import Iterable

from django.db.models import Min, OuterRef, QuerySet, Subquery
from django.utils import timezone

from governance import selectors
from governance.choices import PromotionState, ReleaseState
from governance.models import DeploymentTarget, Policy, PromotionRequest, Release
from governance.policy import Check, Facts, evaluate, parse_rules
from registry import cards
from registry.models import ModelCardRevision, ModelVersion, VersionSignature


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
    result: dict[int, dict] = defaultdict(dict)
    rows = (
        Release.objects.filter(version_id__in=version_ids, state=ReleaseState.LIVE, live_at__isnull=False)
        .values("version_id", "target__stage")
        .annotate(since=Min("live_at"))
    )
    for row in rows:
        result[row["version_id"]][row["target__stage"]] = row["since"]
    return result


def current_policies(pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], Policy]:
    """(target_id, model_id) -> the policy `selectors.current_policy()` would pick, in one query."""
    pairs = set(pairs)
    target_ids = {t for t, _ in pairs}
    model_ids = {m for _, m in pairs}
    newest: dict[tuple[int, int | None], Policy] = {}
    for policy in Policy.objects.filter(target_id__in=target_ids).order_by("version"):
        if policy.model_id is None or policy.model_id in model_ids:
            newest[(policy.target_id, policy.model_id)] = policy
    return {(t, m): newest.get((t, m)) or newest.get((t, None)) for t, m in pairs}


def _facts(version: ModelVersion, card, signature, live_since: dict, rules, now) -> Facts:
    """The same facts as `selectors.promotion_facts()`, from prefetched rows."""
    filled, license_ = frozenset(), None
    if card is not None:
        report = cards.completeness(card.content)
        filled = frozenset(s for s in cards.SECTIONS if s not in report["missing"] and s not in report["empty"])
        license_ = (card.content.get("governance") or {}).get("license") or (card.content.get("metadata") or {}).get(
            "license"
        )
    verified, detail = None, ""
    if rules.require_verified_digest:  # storage is only asked when a rule looks at the answer
        verified, detail = selectors.stored_digest_check(version)
    lineage = {"datasets_with_digest": 0, "code_commit": None}
    if rules.require_lineage:  # a graph walk per version: only when a rule looks at the answer
        lineage = selectors._lineage_summary(version)
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
        now=now,
    )


def evaluate_many(pairs: list[tuple[ModelVersion, DeploymentTarget]]) -> dict[tuple[int, int], list[Check]]:
    """(version_id, target_id) -> every policy check, for many pairs in a fixed number of queries."""
    if not pairs:
        return {}
    version_ids = list({v.pk for v, _ in pairs})
    latest_cards = _latest_cards(version_ids)
    signatures = _latest_signatures(version_ids)
    live = _live_since(version_ids)
    policies = current_policies((t.pk, v.model_id) for v, t in pairs)
    now = timezone.now()
    result = {}
    for version, target in pairs:
        rules = parse_rules(policies[(target.pk, version.model_id)].rules)
        facts = _facts(
            version, latest_cards.get(version.pk), signatures.get(version.pk), live.get(version.pk, {}), rules, now
        )
        result[(version.pk, target.pk)] = evaluate(rules, facts)
    return result


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
