"""What a person types survives the server: line breaks as browsers send them (CRLF) count once against the
5,000-character bound, a refused form comes back filled in, and every error a browser meets is a page of the site
(HTML outside /api/, the sign-in lockout included)."""

import html
import re

import pytest
from django.test import Client
from django.urls import path
from playwright.sync_api import expect

from audit.models import AuditEvent
from config import urls
from governance import free_text, services
from governance.models import Approval
from tests.e2e.conftest import allow_orm_beside_playwright, chromium  # noqa: F401 - fixtures
from tests.governance.conftest import two_serving_releases
from tests.ui import builders

LINES = ["line"] * 1000  # 4,999 characters with one per line break, as the browser counts; 5,998 as it sends them
TYPED = "\n".join(LINES)
SENT = "\r\n".join(LINES)
assert len(TYPED) <= free_text.MAX_CHARS < len(SENT)


def crash(request):
    raise RuntimeError("a bug in a view")


# This module is also the URLconf of the 500 tests: the site's routes and handlers, and a view that fails.
urlpatterns = [path("ui-crash/", crash), path("api/v1/crash/", crash), *urls.urlpatterns]
handler400, handler403, handler404, handler500 = urls.handler400, urls.handler403, urls.handler404, urls.handler500


def as_user(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def seen_fields(page) -> dict:
    return {name: value if value is not None else "" for name, value in page.context["seen"].items()}


def textarea(response, element_id: str) -> tuple[str, str]:
    """The textarea's attributes and its text (the parser drops one newline right after the tag)."""
    found = re.search(rf'<textarea id="{element_id}"([^>]*)>\n?(.*?)</textarea>', response.content.decode(), re.S)
    assert found, f"no textarea #{element_id}"
    return found[1], html.unescape(found[2])


@pytest.fixture
def rollback_target(personas):
    """prod, acme/churn v1 in release 2 now and release 1 before it: an admin may roll back to release 1."""
    admin, owner = personas["admin"].user, personas["owner"].user
    builders.target(admin)
    builders.version(owner, builders.model(owner), "v1")
    two_serving_releases()
    return as_user(admin)


# --- Line breaks: CRLF from a form is LF, counted and stored as the API's


def test_a_multi_line_comment_the_browser_accepts_is_recorded_with_lf_breaks(seeded):
    pk = seeded["promotion"].pk
    reviewer = as_user(seeded["reviewer"].user)
    seen = seen_fields(reviewer.get(f"/promotions/{pk}/"))
    confirm = reviewer.post(f"/promotions/{pk}/review/", {"decision": "reject", "comment": SENT, **seen})
    assert confirm.status_code == 200, confirm.content.decode()[:2000]
    assert "Confirm your rejection" in confirm.content.decode()
    # the confirmation page's hidden field goes back with CRLF breaks as well
    done = reviewer.post(
        f"/promotions/{pk}/review/",
        {"decision": "reject", "comment": SENT, **seen, "confirm": "yes"},
        follow=True,
    )
    assert f"You rejected promotion #{pk}." in done.content.decode()
    assert Approval.objects.get(request_id=pk).comment == TYPED


def test_a_cancel_reason_is_stored_with_lf_breaks(seeded):
    pk = seeded["promotion"].pk
    as_user(seeded["owner"].user).post(f"/promotions/{pk}/cancel/", {"reason": "Wrong version.\r\nUse v3."})
    assert AuditEvent.objects.get(action="promotion.cancelled").reason == "Wrong version.\nUse v3."


def test_a_refused_cancel_keeps_its_reason_once(seeded):
    pk = seeded["promotion"].pk
    owner = as_user(seeded["owner"].user)
    reason = "Superseded by v3, which fixes the calibration. " * 110  # over the bound: refused
    refused = owner.post(f"/promotions/{pk}/cancel/", {"reason": reason}, follow=True)
    assert "no more than" in refused.content.decode()
    [kept] = re.findall(r'<input id="cancel-reason"[^>]*value="([^"]*)"', refused.content.decode())
    assert html.unescape(kept) == reason.strip()
    again = owner.get(f"/promotions/{pk}/").content.decode()
    assert re.findall(r'<input id="cancel-reason"[^>]*value="([^"]*)"', again) == [""]  # shown once
    assert not AuditEvent.objects.filter(action="promotion.cancelled").exists()


def test_a_rollback_reason_is_stored_with_lf_breaks(rollback_target):
    done = rollback_target.post("/targets/prod/rollback/", {"reason": "p95 doubled\r\nafter 14:00", "release": "1"})
    assert done.status_code == 302
    assert AuditEvent.objects.get(action="release.rolled_back").reason == "p95 doubled\nafter 14:00"


@pytest.mark.django_db(transaction=True)  # the live server thread must see committed rows
def test_a_browser_sends_a_multi_line_comment_at_the_bound_and_it_is_recorded(live_server, chromium, seeded):  # noqa: F811
    """The real thing: Chromium counts a line break once against maxlength, then sends it as CRLF."""
    pk = seeded["promotion"].pk
    page = chromium.new_context().new_page()
    page.goto(f"{live_server.url}/accounts/login/?next=/promotions/{pk}/")
    page.get_by_label("Username").fill("reviewer")
    page.get_by_label("Password").fill("pw-reviewer")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server.url}/promotions/{pk}/")
    page.get_by_label("Why reject? (required)").fill(TYPED)
    page.get_by_role("button", name="Reject…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your rejection")
    page.get_by_role("button", name="Confirm rejection").click()
    expect(page.get_by_role("status")).to_contain_text(f"You rejected promotion #{pk}.")
    assert Approval.objects.get(request_id=pk).comment == TYPED


# --- A refused form comes back with what was typed, once


def test_a_review_refused_because_the_policy_changed_keeps_the_comment(seeded):
    pk = seeded["promotion"].pk
    reviewer = as_user(seeded["reviewer"].user)
    seen = seen_fields(reviewer.get(f"/promotions/{pk}/"))
    services.policy_set(
        actor=seeded["admin"].user, target=seeded["prod"], rules={**builders.POLICY, "approvals_required": 1}
    )
    comment = "The card needs a <training_data> section.\r\nAnd a fairness one."
    refused = reviewer.post(
        f"/promotions/{pk}/review/", {"decision": "reject", "comment": comment, **seen}, follow=True
    )
    assert services.CHANGED_SINCE_REVIEW in html.unescape(refused.content.decode())
    assert textarea(refused, "reject-comment")[1] == comment.replace("\r\n", "\n")
    assert textarea(refused, "approve-comment")[1] == ""
    assert textarea(reviewer.get(f"/promotions/{pk}/"), "reject-comment")[1] == ""  # shown once


def test_a_blocked_approval_keeps_the_comment_readable(seeded):
    """Approval is blocked (a rule fails): the comment comes back in a read-only box, which can be copied."""
    pk = seeded["promotion"].pk
    reviewer = as_user(seeded["reviewer"].user)
    seen = seen_fields(reviewer.get(f"/promotions/{pk}/"))
    refused = reviewer.post(
        f"/promotions/{pk}/review/", {"decision": "approve", "comment": "Checked the AUC.", **seen}, follow=True
    )
    assert "Approval is blocked while 1 rule(s) fail" in refused.content.decode()
    attributes, text = textarea(refused, "approve-comment")
    assert text == "Checked the AUC." and "readonly" in attributes and "disabled" not in attributes
    assert "disabled" in textarea(reviewer.get(f"/promotions/{pk}/"), "approve-comment")[0]


def test_a_refused_rollback_keeps_the_reason(rollback_target):
    reason = "\nerrors at 5%\r\nsince 14:00"
    refused = rollback_target.post("/targets/prod/rollback/", {"reason": reason, "release": "99"}, follow=True)
    assert "prod has no release 99." in refused.content.decode()
    assert textarea(refused, "rollback-reason")[1] == "\nerrors at 5%\nsince 14:00"
    assert textarea(rollback_target.get("/targets/prod/"), "rollback-reason")[1] == ""


def test_the_rollback_message_names_the_version_as_the_pages_do(rollback_target):
    done = rollback_target.post("/targets/prod/rollback/", {"reason": "p95 doubled", "release": "1"}, follow=True)
    assert "Rolling back: release 1 (acme/churn v1) is desired again" in done.content.decode()


def test_a_failed_sign_in_keeps_the_username(client, personas):
    page = client.post("/accounts/login/", {"username": "reviewer", "password": "wrong"})
    assert b"didn't match" in page.content
    assert re.search(r'<input id="id_username" name="username" value="reviewer"', page.content.decode())


def test_a_bad_lineage_option_shows_the_options_form_with_what_was_typed(seeded):
    page = as_user(seeded["reviewer"].user).get(
        "/lineage/",
        {"nodeId": "model:acme/churn:1", "as_of": "2026-12-08 01:00", "depth": "5", "direction": "upstream"},
    )
    body = page.content.decode()
    assert page.status_code == 400 and "as_of must be an RFC 3339 time" in body
    form = body[body.index('<form method="get" class="lineage-form"') :]
    assert 'name="as_of" value="2026-12-08 01:00"' in form and 'name="depth" min="0"' in form
    assert 'value="5"' in form and '<option value="upstream" selected>' in form
    assert 'name="nodeId" value="model:acme/churn:1"' in form
    assert body.index("as_of must be") < body.index('class="lineage-form"')  # the problem above the form


# --- Error pages outside /api/ are the site's pages


@pytest.mark.parametrize("url", ["/promotions/abc/", "/models/demo/", "/reviews/extra/", "/nothing-here"])
def test_an_unknown_web_address_is_the_sites_404_page(personas, url):
    page = as_user(personas["reviewer"].user).get(url)
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")
    body = page.content.decode()
    assert '<html lang="en">' in body and "<title>Not found" in body and "No page has this address" in body
    assert 'href="/reviews/"' in body  # the site's navigation
    api = as_user(personas["reviewer"].user).get("/api/v1/nothing-here")
    assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"


@pytest.mark.urls(__name__)
def test_a_crash_in_a_web_page_is_an_html_500_page_and_json_under_the_api(db):
    client = Client(raise_request_exception=False)
    page = client.get("/ui-crash/")
    assert page.status_code == 500 and page["Content-Type"].startswith("text/html")
    body = page.content.decode()
    assert '<html lang="en">' in body and "<title>Server error" in body
    assert f"<code>{page['X-Request-ID']}</code>" in body  # to quote when reporting it
    api = client.get("/api/v1/crash/")
    assert api.status_code == 500 and api.json()["error"]["code"] == "internal_error"


def test_the_lockout_is_a_page_saying_when_to_try_again(client, personas, settings):
    wrong = {"username": "reviewer", "password": "wrong"}
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post("/accounts/login/", wrong).status_code == 200
    locked = client.post("/accounts/login/", wrong)
    assert locked.status_code == 429 and locked["Content-Type"].startswith("text/html")
    body = re.sub(r"\s+", " ", locked.content.decode())
    minutes = round(settings.AXES_COOLOFF_TIME * 60)
    assert '<html lang="en">' in body and "<title>Sign-in locked" in body and 'class="top"' in body
    assert f"Try again in {minutes} minutes." in body and "<strong>reviewer</strong>" in body
