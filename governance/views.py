"""Server-rendered reviewer pages: the review queue, a promotion request, targets.

Reads go through the same permission-filtered selectors as the API (an object the user may not view
is a 404); writes call the services, and a refused move shows the service's own message.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts import access
from core.errors import DomainError
from core.keyset import keyset_page
from core.planning import custom_plans
from governance import deployment, free_text, presenters, selectors, services, ui_compare, ui_selectors
from governance.choices import Decision, PromotionState
from governance.policy import failing
from registry import selectors as registry_selectors

PAGE_SIZE = 25


def not_found(request, what: str):
    return render(request, "ui/404.html", {"what": what}, status=404)


def paginate(request, queryset, param: str = "page"):
    return Paginator(queryset, PAGE_SIZE).get_page(request.GET.get(param))


def _form_text(request, field: str) -> str:
    """A free-text field as the API's clients send it, lines ending in LF. Browsers send each line break as CRLF but
    count it as one character against maxlength: measured raw, a text the form accepted was refused as too long
    (and stored unlike the API's)."""
    return request.POST.get(field, "").replace("\r\n", "\n").replace("\r", "\n")


DRAFT_MAX_CHARS = 2 * free_text.MAX_CHARS  # no browser form sends more (maxlength): a larger text is not kept


def _keep_draft(request, key: str, **texts: str) -> None:
    """What the person typed into a form the server refused, for the page that shows that form again: the refusal
    says what to change, and the text is there to change."""
    kept = {name: text for name, text in texts.items() if text and len(text) <= DRAFT_MAX_CHARS}
    if kept:
        request.session[f"ui-draft:{key}"] = kept


def _draft(request, key: str) -> dict:
    """The kept draft, once: the next visit shows an empty form again."""
    return request.session.pop(f"ui-draft:{key}", {})


@login_required
def review_queue(request):
    queue = selectors.review_queue(user=request.user)
    with custom_plans():  # how many requests the page and its count scan varies too much for one plan
        page = keyset_page(queue, request.GET, positions=selectors.promotions_visible(user=request.user))
    rows = ui_selectors.queue_rows(list(page.object_list))
    return render(request, "governance/review_queue.html", {"page": page, "rows": rows, "now": timezone.now()})


def _promotion(request, pk: int):
    return selectors.promotions_visible(user=request.user).filter(pk=pk).first()


def _blockers(user, promotion, view: dict) -> dict:
    """Why the user may not approve or reject right now ("" when they may)."""
    evaluation = view["evaluation"]
    if promotion.state != PromotionState.PENDING:
        state = f"This request is {promotion.state}; only pending requests can be reviewed."
        return {"approve": state, "reject": state}
    if promotion.expires_at <= timezone.now():
        expired = "This request has expired; the requester can open a new one."
        return {"approve": expired, "reject": expired}
    allowed, why = selectors.may_review(user=user, request=promotion, rules=evaluation.rules)
    if not allowed:
        return {"approve": why, "reject": why}
    blocking = failing(evaluation.checks)
    if blocking:
        names = ", ".join(c.rule for c in blocking)
        return {
            "approve": f"Approval is blocked while {len(blocking)} rule(s) fail: {names}. See Policy checks.",
            "reject": "",
        }
    username = user.get_username()
    counted = [a for a in view["approvals"] if a["counts"]]
    if any(a["user"] == username for a in counted) and len(counted) < evaluation.rules.approvals_required:
        return {"approve": "You already approved this request, and your approval still counts.", "reject": ""}
    return {"approve": "", "reject": ""}


@login_required
def promotion_detail(request, pk: int):
    promotion = _promotion(request, pk)
    if promotion is None:
        return not_found(request, f"promotion request #{pk}")
    draft = _draft(request, f"promotion:{pk}")
    view = presenters.promotion_view(promotion)
    evaluation = view["evaluation"]
    candidate = promotion.version
    release = selectors.live_release(target=promotion.target)
    serving = release.version if release else None
    serving_hidden = bool(serving) and not selectors.visible_model_ids(user=request.user, model_ids=[serving.model_id])
    compare_to = None if serving_hidden else serving
    candidate_card = registry_selectors.latest_card(candidate)
    serving_card = registry_selectors.latest_card(compare_to) if compare_to else None
    return render(
        request,
        "governance/promotion_detail.html",
        {
            "promotion": promotion,
            "view": view,
            "rules": evaluation.rules,
            "candidate": candidate,
            "candidate_card": candidate_card,
            "release": release,
            "serving": compare_to,
            "serving_hidden": serving_hidden,
            "serving_card": serving_card,
            "same_version": compare_to is not None and compare_to.pk == candidate.pk,
            "metrics": ui_compare.metric_deltas(
                candidate.metrics, compare_to.metrics if compare_to else None, evaluation.rules
            ),
            "card_diff": ui_compare.card_diff(
                candidate_card.content if candidate_card else None, serving_card.content if serving_card else None
            ),
            "lineage": ui_compare.lineage_rows(candidate, compare_to),
            "failing": failing(evaluation.checks),
            "blockers": _blockers(request.user, promotion, view),
            "seen": _shown(promotion, evaluation),
            "may_cancel": promotion.state == PromotionState.PENDING
            and (
                promotion.requester_id == request.user.pk
                or access.has_perm(request.user, "manage_deploymenttarget", promotion.target)
            ),
            "free_text_max": free_text.MAX_CHARS,
            "draft": draft,  # {"approve"|"reject": comment} of a refused decision
        },
    )


def _shown(promotion, evaluation) -> dict:
    """What a review page shows, as its hidden fields carry it (governance/includes/seen_fields.html)."""
    return {
        "digest": promotion.version.digest,
        "card_revision": evaluation.card_revision or "",
        "policy_version": evaluation.policy.version,
    }


def _seen_or_none(form) -> dict | None:
    try:
        return _seen(form)
    except ValueError:
        return None


def _seen(form) -> dict:
    """The confirmation page's hidden fields; ValueError when they are missing or malformed."""
    if not form.get("digest"):
        raise ValueError("no digest")
    card = form.get("card_revision", "")
    return {
        "digest": form["digest"],
        "card_revision": int(card) if card else None,
        "policy_version": int(form.get("policy_version", "")),
    }


@login_required
@require_POST
def promotion_review(request, pk: int):
    """Approve or reject in two steps: the form posts here, a confirmation page posts back with confirm=yes."""
    promotion = _promotion(request, pk)
    if promotion is None:
        return not_found(request, f"promotion request #{pk}")
    detail_url = reverse("ui-promotion", args=[pk])
    decision = request.POST.get("decision")
    comment = _form_text(request, "comment").strip()

    def refuse(message: str):
        messages.error(request, message)
        if decision in Decision.values:  # back in the textarea it came from
            _keep_draft(request, f"promotion:{pk}", **{decision: comment})
        return redirect(detail_url)

    if decision not in Decision.values:
        return refuse("Choose approve or reject.")
    if decision == Decision.REJECT and not comment:
        return refuse("A rejection needs a comment that tells the requester what to change.")
    try:
        free_text.check("comment", comment)  # before the confirmation page shows it
    except DomainError as exc:
        return refuse(exc.message)
    view = presenters.promotion_view(promotion)
    evaluation = view["evaluation"]
    blocked = _blockers(request.user, promotion, view)[decision]
    if blocked:
        return refuse(blocked)
    if request.POST.get("confirm") != "yes":
        # The request page says what it showed: if that changed before the confirmation page, the reviewer
        # reads the request again instead of confirming a card or policy they never saw.
        seen = _shown(promotion, evaluation)
        if "digest" in request.POST and _seen_or_none(request.POST) != _seen_or_none(seen):
            return refuse(services.CHANGED_SINCE_REVIEW)
        return render(
            request,
            "governance/promotion_confirm.html",
            {"promotion": promotion, "view": view, "decision": decision, "comment": comment, "seen": seen},
        )
    # The decision is about what the confirmation page showed: the service refuses it if that changed.
    try:
        seen = _seen(request.POST)
    except ValueError:
        return refuse(services.CHANGED_SINCE_REVIEW)
    try:
        if decision == Decision.APPROVE:
            done = services.promotion_approve(actor=request.user, request_id=pk, comment=comment, seen=seen)
        else:
            done = services.promotion_reject(actor=request.user, request_id=pk, comment=comment, seen=seen)
    except DomainError as exc:
        return refuse(exc.message)
    if decision == Decision.REJECT:
        messages.success(request, f"You rejected promotion #{pk}.")
    elif done.state == PromotionState.APPROVED:
        messages.success(request, f"You approved promotion #{pk}. It now has every approval it needs: approved.")
    else:
        messages.success(request, f"You approved promotion #{pk}. It still needs more approvals.")
    return redirect(detail_url)


@login_required
@require_POST
def promotion_cancel(request, pk: int):
    promotion = _promotion(request, pk)
    if promotion is None:
        return not_found(request, f"promotion request #{pk}")
    reason = _form_text(request, "reason").strip()
    try:
        services.promotion_cancel(actor=request.user, request_id=pk, reason=reason)
    except DomainError as exc:
        messages.error(request, exc.message)
        _keep_draft(request, f"promotion:{pk}", cancel=reason)
    else:
        messages.success(request, f"You cancelled promotion #{pk}.")
    return redirect("ui-promotion", pk=pk)


@login_required
def target_list(request):
    page = paginate(request, selectors.targets_visible(user=request.user))
    targets = list(page.object_list)
    live = ui_selectors.live_by_target(targets)
    visible = selectors.visible_model_ids(user=request.user, model_ids=[r.version.model_id for r in live.values()])
    rows = [
        {
            "target": t,
            "release": live.get(t.pk),
            "model_visible": t.pk in live and live[t.pk].version.model_id in visible,
        }
        for t in targets
    ]
    return render(request, "governance/target_list.html", {"page": page, "rows": rows})


@login_required
def target_detail(request, name: str):
    target = selectors.targets_visible(user=request.user).filter(name=name).first()
    if target is None:
        return not_found(request, f"target {name}")
    release = selectors.live_release(target=target)
    page = paginate(request, ui_selectors.target_releases(target=target))
    releases = list(page.object_list)
    may_roll_back = access.has_perm(request.user, "deploy_deploymenttarget", target)
    draft = _draft(request, f"target:{target.pk}")
    roll_back_to = deployment.previous_good(target) if may_roll_back else None
    # Deploying on a target grants no view of the models it served: the rollback form hides them too.
    shown = [*releases, *(r for r in (release, roll_back_to) if r is not None)]
    visible = selectors.visible_model_ids(user=request.user, model_ids=[r.version.model_id for r in shown])
    policy = selectors.current_policy(target=target)
    # An override replaces the target's policy outright for its model: the page says which models have one.
    overrides_page = paginate(
        request, selectors.policy_overrides(user=request.user, targets=[target]), "overrides_page"
    )
    pending = ui_selectors.pending_for_target(user=request.user, target=target)
    pending_page = paginate(request, pending, "pending_page")
    return render(
        request,
        "governance/target_detail.html",
        {
            "target": target,
            "release": release,
            "page": page,
            "releases": releases,
            "visible_models": visible,
            "policy": policy,
            "rules": selectors.rules_of(policy),
            "overrides_page": overrides_page,
            "overrides": [(o, selectors.rules_of(o)) for o in overrides_page.object_list],
            "pending_page": pending_page,
            "may_roll_back": may_roll_back,
            "free_text_max": free_text.MAX_CHARS,
            "roll_back_to": roll_back_to,
            "draft": draft,  # {"reason": ...} of a refused rollback
        },
    )


def _release_number(request, field: str = "release") -> int | None:
    """The release the button named (`from`: the one desired when the page was read): a second click then finds it
    already desired instead of picking anew."""
    value = request.POST.get(field, "")
    # ASCII only: isdigit() also takes "²", which int() refuses (a 500).
    return int(value) if value.isascii() and value.isdecimal() and len(value) <= 9 else None


@login_required
@require_POST
def target_rollback(request, name: str):
    """The rollback button: same service, permission and audit as POST /api/v1/targets/{name}/rollback."""
    target = selectors.targets_visible(user=request.user).filter(name=name).first()
    if target is None:
        return not_found(request, f"target {name}")
    if not access.has_perm(request.user, "deploy_deploymenttarget", target):
        messages.error(request, f"You may not roll back {name}: that needs the deploy permission on the target.")
        return redirect("ui-target", name=name)
    reason = _form_text(request, "reason")
    try:
        release = deployment.deployment_rollback(
            actor=request.user,
            target=target,
            reason=reason,
            to_number=_release_number(request),
            from_number=_release_number(request, "from"),
        )
    except DomainError as exc:
        messages.error(request, exc.message)
        _keep_draft(request, f"target:{target.pk}", reason=reason)
    else:
        version = release.version
        hidden = not selectors.visible_model_ids(user=request.user, model_ids=[version.model_id])
        what = "a version of a model you may not view" if hidden else f"{version.model} v{version.number}"
        messages.success(
            request, f"Rolling back: release {release.number} ({what}) is desired again; the worker moves traffic."
        )
    return redirect("ui-target", name=name)
