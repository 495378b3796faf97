"""End to end in a real browser: a failing rule blocks approval; after the fix two reviewers approve."""

import re

import pytest
from playwright.sync_api import expect

from governance import services
from governance.models import PromotionRequest
from registry import services as registry
from tests.ui import builders

POLICY = {
    "approvals_required": 2,
    "approver_groups": ["reviewers"],
    "requester_can_approve": False,
    "required_card_sections": ["training_data"],
    "metric_gates": [{"metric": "auc", "op": ">=", "threshold": 0.85}],
}


def log_in(browser, base_url, username, password, screenshots=None):
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    page.goto(f"{base_url}/reviews/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/reviews/$"))
    if screenshots:
        screenshots(page, "01-login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{base_url}/reviews/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Waiting for your review")
    return page


def approve_through_confirmation(page, comment: str):
    page.get_by_label("Comment (optional)").fill(comment)
    page.get_by_role("button", name="Approve…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your approval")
    return page


@pytest.mark.django_db(transaction=True)  # the live server thread must see committed rows
def test_reviewers_approve_after_the_failing_rule_is_fixed(live_server, chromium, screenshots, personas):
    admin, owner = personas["admin"].user, personas["owner"].user
    prod = builders.target(admin, policy=POLICY)
    churn = builders.model(owner)
    serving = builders.version(owner, churn, "v1", metrics={"auc": 0.87}, card=builders.CARD_WITH_TRAINING_DATA)
    builders.release(prod, serving, 1)
    candidate = builders.version(owner, churn, "v2", metrics={"auc": 0.9}, card=builders.CARD_WITHOUT_TRAINING_DATA)
    request = services.promotion_request(
        actor=owner, version=candidate, target=prod, reason="Better AUC on March data."
    )
    builders.reviewer("reviewer2", password="pw-reviewer2")
    base = live_server.url

    # The reviewer logs in, opens the queue and the request.
    page = log_in(chromium, base, "reviewer", "pw-reviewer", screenshots)
    row = page.get_by_role("row").filter(has_text="acme/churn")
    expect(row).to_contain_text("owner")
    expect(row).to_contain_text("1 failing")
    screenshots(page, "02-queue")
    row.get_by_role("link", name=f"Review #{request.pk}").click()
    expect(page).to_have_url(f"{base}/promotions/{request.pk}/")

    # The failing rule is shown and blocks approval, with the reason next to the disabled button.
    rule = page.locator('tr[data-rule="card_sections"]')
    expect(rule).to_contain_text("✗ fail")
    expect(rule).to_contain_text("missing or leaves empty: training_data")
    approve = page.get_by_role("button", name="Approve…")
    expect(approve).to_be_disabled()
    expect(approve).to_have_accessible_description(
        re.compile(r"Approval is blocked while 1 rule\(s\) fail: card_sections")
    )
    expect(page.locator("#approve-blocked")).to_be_visible()
    expect(page.locator("table.metrics")).to_contain_text("▲ better")
    screenshots(page, "03-request-blocked")

    # The owner adds the missing section (a new card revision); the reviewer reloads and approves.
    registry.card_revision_add(actor=owner, version=candidate, content=builders.CARD_WITH_TRAINING_DATA)
    page.reload()
    expect(page.locator('tr[data-rule="card_sections"]')).to_contain_text("✓ pass")
    expect(page.get_by_role("button", name="Approve…")).to_be_enabled()
    approve_through_confirmation(page, "Training data documented now; metrics improve on what serves.")
    assert request.approvals.count() == 0  # nothing is recorded before the confirmation
    screenshots(page, "04-confirm")
    page.get_by_role("button", name="Confirm approval").click()
    expect(page).to_have_url(f"{base}/promotions/{request.pk}/")
    expect(page.get_by_role("status")).to_contain_text("It still needs more approvals")
    expect(page.locator("#approval-count")).to_have_text("1 of 2")
    expect(page.get_by_role("button", name="Approve…")).to_be_disabled()
    expect(page.locator("#approve-blocked")).to_have_text(re.compile("You already approved this request"))
    screenshots(page, "05-first-approval")
    page.context.close()

    # A second reviewer logs in, finds the request in their queue and approves.
    page = log_in(chromium, base, "reviewer2", "pw-reviewer2")
    expect(page.get_by_role("row").filter(has_text="acme/churn")).to_contain_text("none")  # no failing rules now
    page.get_by_role("link", name=f"Review #{request.pk}").click()
    approve_through_confirmation(page, "Agreed.")
    page.get_by_role("button", name="Confirm approval").click()
    expect(page.get_by_role("status")).to_contain_text("approved")
    expect(page.locator(".facts .badge.state-approved")).to_have_text("approved")
    expect(page.locator("#approval-count")).to_have_text("2 of 2")
    screenshots(page, "06-approved")

    # The model and target pages show where each version serves and what is pending.
    page.get_by_role("link", name="acme/churn v1").first.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("acme/churn v1")
    page.get_by_role("link", name="acme/churn", exact=True).click()
    expect(page.get_by_role("row").filter(has_text="v1")).to_contain_text("prod")
    screenshots(page, "07-model")
    page.get_by_role("link", name="v2", exact=True).click()
    expect(page.get_by_role("heading", name="Promotion history")).to_be_visible()
    expect(page.locator("section", has=page.get_by_role("heading", name="Promotion history"))).to_contain_text(
        "approved"
    )
    screenshots(page, "08-version")
    page.get_by_role("link", name="Targets").click()
    page.get_by_role("link", name="prod", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Target prod")
    expect(page.locator("dl.rules")).to_contain_text("training_data")
    screenshots(page, "09-target")

    # Keyboard users reach the skip link first, and it shows when focused.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    expect(page.get_by_role("link", name="Skip to content")).to_be_in_viewport()
    page.context.close()

    request.refresh_from_db()
    assert request.state == "approved"
    assert sorted(a.user.username for a in request.approvals.all()) == ["reviewer", "reviewer2"]
    assert PromotionRequest.objects.get(pk=request.pk).decided_at is not None
