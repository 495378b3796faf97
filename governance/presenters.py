"""Shapes governance objects for the API and the UI (one place, so both show the same facts)."""

from governance import selectors
from governance.models import PromotionRequest


def promotion_view(request: PromotionRequest) -> dict:
    evaluation = selectors.promotion_evaluate(version=request.version, target=request.target)
    counted = {
        a.pk
        for a in selectors.counted_approvals(
            request=request, policy=evaluation.policy, card_revision=evaluation.card_revision
        )
    }
    return {
        "id": request.pk,
        "state": request.state,
        "model": str(request.version.model),
        "version": request.version.number,
        "digest": request.version.digest,
        "host_revision": request.host_revision,
        "target": request.target.name,
        "requester": request.requester.username,
        "reason": request.reason,
        "created_at": request.created_at,
        "expires_at": request.expires_at,
        "decided_at": request.decided_at,
        "policy_version": evaluation.policy.version,
        "approvals_required": evaluation.rules.approvals_required,
        "approvals_counted": len(counted),
        "approvals": [
            {
                "user": a.user.username,
                "decision": a.decision,
                "comment": a.comment,
                "at": a.created_at,
                "counts": a.pk in counted,
                "card_revision": a.card_revision,
                "policy_version": a.policy.version,
            }
            for a in request.approvals.all()
        ],
        "checks": [c.__dict__ for c in evaluation.checks],
        "evaluation": evaluation,
    }
