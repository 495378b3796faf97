import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils.html import escape

from core.keyset import keyset_page
from governance import selectors, services
from governance.models import Approval, PromotionRequest
from registry import services as registry
from tests.ui import builders

PAGES = [
    "/reviews/",
    "/promotions/{pk}/",
    "/targets/",
    "/targets/prod/",
    "/models/acme/churn/",
    "/models/acme/churn/versions/2/",
]


def url(template, seeded):
    return template.format(pk=seeded["promotion"].pk)


def as_user(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text(response) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def review(client, pk, decision, comment="", confirm=True, **seen):
    data = {"decision": decision, "comment": comment}
    if confirm:
        page = client.post(f"/promotions/{pk}/review/", data)
        assert page.status_code == 200, text(page)
        # what the confirmation page carries forward
        for name in ("digest", "card_revision", "policy_version"):
            data[name] = seen.get(name, re.search(rf'name="{name}" value="([^"]*)"', page.content.decode())[1])
        data["confirm"] = "yes"
    return client.post(f"/promotions/{pk}/review/", data, follow=True)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_needs_login(client, seeded, path):
    r = client.get(url(path, seeded))
    assert r.status_code == 302 and r["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("path", [p for p in PAGES if p not in ("/reviews/", "/targets/")])
def test_objects_the_user_may_not_view_are_404(seeded, path):
    r = as_user(seeded["outsider"].user).get(url(path, seeded))
    assert r.status_code == 404 and b"Not found" in r.content


def test_unknown_objects_are_404(seeded):
    reviewer = as_user(seeded["reviewer"].user)
    for path in ("/promotions/999999/", "/targets/nope/", "/models/acme/nope/", "/models/acme/churn/versions/9/"):
        assert reviewer.get(path).status_code == 404, path


def test_queue_lists_requests_waiting_for_me(seeded):
    page = text(as_user(seeded["reviewer"].user).get("/reviews/"))
    pk = seeded["promotion"].pk
    assert f'href="/promotions/{pk}/"' in page
    assert "acme/churn" in page and "v2" in page and "prod" in page and "owner" in page
    assert "1 failing" in page
    # the requester does not review their own request; outsiders review nothing
    assert f"/promotions/{pk}/" not in text(as_user(seeded["owner"].user).get("/reviews/"))
    assert "Nothing is waiting for you" in text(as_user(seeded["outsider"].user).get("/reviews/"))


def test_queue_is_paginated_by_position_not_page_number(seeded):
    owner, prod = seeded["owner"].user, seeded["prod"]
    requests = [seeded["promotion"]] + [
        services.promotion_request(actor=owner, version=builders.version(owner, seeded["churn"], f"p{i}"), target=prod)
        for i in range(26)
    ]
    reviewer = as_user(seeded["reviewer"].user)

    def shown(query: str = "") -> tuple[list[int], str]:
        page = text(reviewer.get("/reviews/" + query))
        return [int(pk) for pk in re.findall(r"Review #(\d+)", page)], page

    first, page = shown()
    assert first == [r.pk for r in requests[:25]] and "27 in all" in page
    assert 'rel="prev"' not in page and re.search(rf'href="\?after={first[-1]}" rel="next"', page)
    second, page = shown(f"?after={first[-1]}")
    assert second == [r.pk for r in requests[25:]] and "27 in all" in page
    assert 'rel="next"' not in page and re.search(rf'href="\?before={second[0]}" rel="prev"', page)
    assert shown(f"?before={second[0]}")[0] == first

    # a request decided between two page loads shifts nothing: the next page starts after the same request
    services.promotion_cancel(actor=owner, request_id=requests[3].pk)
    assert shown(f"?after={first[-1]}")[0] == second
    # even when the boundary request itself has left the queue
    services.promotion_cancel(actor=owner, request_id=requests[24].pk)
    assert shown(f"?after={first[-1]}")[0] == second
    assert shown(f"?before={second[0]}")[0] == [r.pk for r in requests[:25] if r not in (requests[3], requests[24])]
    # a cursor naming no request, or not a number, is the first page
    for query in ("?after=999999999", "?before=abc", "?after=-1", "?after=" + "9" * 40):
        assert shown(query)[0][:3] == first[:3], query


def statements(client, query: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/models/acme/churn/" + query).status_code == 200
    return len(queries)


def test_versions_page_newest_first_by_position(seeded):
    owner, churn = seeded["owner"].user, seeded["churn"]
    for i in range(26):
        builders.version(owner, churn, f"paged{i}", card={"model_details": f"Card of paged{i}."} if i == 25 else None)
    churn.refresh_from_db()
    newest = churn.latest_number
    pks = dict(churn.versions.values_list("number", "pk"))
    client = as_user(owner)

    def shown(query: str = "") -> tuple[list[int], str]:
        page = text(client.get("/models/acme/churn/" + query))
        return [int(n) for n in re.findall(r'<td class="num"><a href="[^"]*">v(\d+)</a>', page)], page

    first, page = shown()
    assert first == list(range(newest, newest - 25, -1))
    assert f"<dt>Versions</dt><dd>{newest}" in page and f"{newest} in all" in page
    assert re.search(rf'<td class="num"><a href="[^"]*">v{newest}</a></td>.*?1 revision<', page)  # its card
    assert re.search(rf'href="\?after={pks[first[-1]]}" rel="next"', page) and 'rel="prev"' not in page
    second, page = shown(f"?after={pks[first[-1]]}")
    assert second == list(range(newest - 25, 0, -1)) and 'rel="next"' not in page
    assert shown(f"?before={pks[second[0]]}")[0] == first
    # statements: two more after a cursor than on the first page (its position, rows before it), however deep
    assert statements(client, "") + 2 == statements(client, f"?after={pks[first[-1]]}")
    assert statements(client, f"?after={pks[first[-1]]}") == statements(client, f"?after={pks[3]}")


def test_a_cursor_is_placed_only_by_a_request_the_user_may_see(seeded):
    """The boundary's position comes from the rows the user may see: a cursor naming another row is the
    first page, so it cannot place a hidden request among the user's own."""
    owner, prod, reviewer = seeded["owner"].user, seeded["prod"], seeded["reviewer"].user
    for i in range(26):
        services.promotion_request(actor=owner, version=builders.version(owner, seeded["churn"], f"p{i}"), target=prod)
    queue = selectors.review_queue(user=reviewer)
    ordered = list(queue.order_by("created_at", "id").values_list("pk", flat=True))
    boundary = ordered[10]
    seen = keyset_page(queue, {"after": str(boundary)}, positions=selectors.promotions_visible(user=reviewer))
    assert [r.pk for r in seen.object_list] == ordered[11:36] and seen.previous == ordered[11]
    hidden = keyset_page(queue, {"after": str(boundary)}, positions=PromotionRequest.objects.exclude(pk=boundary))
    assert [r.pk for r in hidden.object_list] == ordered[:25] and hidden.previous is None


def test_request_page_shows_failing_rule_and_disabled_approve(seeded):
    page = text(as_user(seeded["reviewer"].user).get(f"/promotions/{seeded['promotion'].pk}/"))
    assert 'data-rule="card_sections"' in page and "✗ fail" in page
    assert "missing or leaves empty: training_data" in page
    assert re.search(r'<button type="submit" class="btn" disabled aria-describedby="approve-blocked">Approve', page)
    assert "Approval is blocked while 1 rule(s) fail: card_sections" in page
    # rejecting stays possible
    assert re.search(r'<button type="submit" class="btn danger">Reject', page)


def test_request_page_compares_with_what_serves(seeded):
    page = text(as_user(seeded["reviewer"].user).get(f"/promotions/{seeded['promotion'].pk}/"))
    # metric deltas, better/worse follow the gate's direction (auc >= 0.85: higher is better)
    assert re.search(
        r"<code>auc</code></th> <td class=\"num\">0.91</td> <td class=\"num\">0.88</td> <td class=\"num\">\+0.03</td>",
        page,
    )
    assert "▲ better" in page
    assert re.search(
        r"<code>latency_ms</code></th> <td class=\"num\">35</td> <td class=\"num\">40</td> <td class=\"num\">-5</td>",
        page,
    )
    # the card diff names the removed section, with its old text
    assert 'Training Data <span class="badge diff-removed">removed</span>' in page
    assert '<span class="d-del">-CRM snapshots 2024-2025, deduplicated.</span>' in page
    assert 'Intended Use <span class="badge">unchanged</span>' in page
    # lineage: code commit of each
    assert "c0ffeev2" in page and "c0ffeev1" in page
    assert "acme/churn v1" in page and "release 1" in page


def test_same_checks_as_the_api(seeded):
    api = seeded["reviewer"].client().get(f"/api/v1/promotions/{seeded['promotion'].pk}").json()
    page = text(as_user(seeded["reviewer"].user).get(f"/promotions/{seeded['promotion'].pk}/"))
    rules = re.findall(r'data-rule="([^"]+)"', page)
    assert rules == [c["rule"] for c in api["checks"]]
    for check in api["checks"]:
        assert escape(check["reason"]) in page


def test_requester_sees_why_they_may_not_approve(seeded):
    page = text(as_user(seeded["owner"].user).get(f"/promotions/{seeded['promotion'].pk}/"))
    assert "You requested this promotion; the policy does not let requesters review their own." in page
    assert 'disabled aria-describedby="reject-blocked"' in page
    assert "Cancel request" in page


def test_approve_needs_confirmation_then_records(seeded):
    owner, v2, pk = seeded["owner"].user, seeded["v2"], seeded["promotion"].pk
    registry.card_revision_add(actor=owner, version=v2, content=builders.CARD_WITH_TRAINING_DATA)
    reviewer = as_user(seeded["reviewer"].user)
    confirm = reviewer.post(f"/promotions/{pk}/review/", {"decision": "approve", "comment": "Looks good."})
    assert confirm.status_code == 200 and b"Confirm your approval" in confirm.content
    assert not Approval.objects.exists()  # nothing recorded before confirmation
    done = text(review(reviewer, pk, "approve", "Looks good."))
    assert f"You approved promotion #{pk}. It still needs more approvals." in done
    assert "1 of 2" in done and "Looks good." in done
    # the button now says why it is disabled
    assert "You already approved this request" in done
    done = text(review(as_user(seeded["reviewer2"]), pk, "approve"))
    assert "approved" in done and "2 of 2" in done
    assert PromotionRequest.objects.get(pk=pk).state == "approved"
    assert 'class="badge state-approved">approved' in done
    assert "This request is approved; only pending requests can be reviewed." in done


def test_a_quorum_that_comes_back_can_be_decided_from_the_page(seeded):
    """An approver who left the group and came back makes the quorum again; the page says so and lets a counted
    approver decide it (the button said "You already approved" and nothing could decide the request)."""
    from django.contrib.auth.models import Group

    owner, v2, pk = seeded["owner"].user, seeded["v2"], seeded["promotion"].pk
    registry.card_revision_add(actor=owner, version=v2, content=builders.CARD_WITH_TRAINING_DATA)
    group = Group.objects.get(name="reviewers")
    first, second = seeded["reviewer"].user, seeded["reviewer2"]
    review(as_user(first), pk, "approve")
    first.groups.remove(group)
    review(as_user(second), pk, "approve")
    first.groups.add(group)
    page = text(as_user(second).get(f"/promotions/{pk}/"))
    assert "2 of 2</strong> counted" in page and "the quorum is met again" in page
    assert "You already approved this request" not in page
    done = text(review(as_user(second), pk, "approve"))
    assert PromotionRequest.objects.get(pk=pk).state == "approved"
    assert "This request is approved; only pending requests can be reviewed." in done
    assert "the quorum is met again" not in done


def test_reject_requires_comment(seeded):
    pk = seeded["promotion"].pk
    reviewer = as_user(seeded["reviewer"].user)
    r = text(reviewer.post(f"/promotions/{pk}/review/", {"decision": "reject", "comment": "  "}, follow=True))
    assert "A rejection needs a comment" in r
    done = text(review(reviewer, pk, "reject", "Add the training data section."))
    assert "You rejected promotion" in done and "Add the training data section." in done
    assert PromotionRequest.objects.get(pk=pk).state == "rejected"


def test_blocked_approval_shows_the_domain_message(seeded):
    pk = seeded["promotion"].pk
    # even when posted directly with a confirmation, the request is refused with the reason
    r = text(review(as_user(seeded["reviewer"].user), pk, "approve", confirm=False))
    assert "Choose approve" not in r and "Approval is blocked while 1 rule(s) fail" in r
    assert not Approval.objects.exists()
    r = text(review(as_user(seeded["owner"].user), pk, "reject", "no", confirm=False))
    assert "You requested this promotion" in r


def test_service_errors_reach_the_page(seeded):
    """A refusal that only the service can make (under the request's lock) is shown as the page's alert,
    in the service's words, and records nothing: here the policy changed after the confirmation page."""
    pk = seeded["promotion"].pk
    r = text(review(as_user(seeded["reviewer"].user), pk, "reject", "nope", policy_version="999"))
    assert f'role="alert">{escape(services.CHANGED_SINCE_REVIEW)}' in r
    assert PromotionRequest.objects.get(pk=pk).state == "pending"


def test_confirmation_is_refused_when_the_card_changed_meanwhile(seeded):
    owner, v2, pk = seeded["owner"].user, seeded["v2"], seeded["promotion"].pk
    registry.card_revision_add(actor=owner, version=v2, content=builders.CARD_WITH_TRAINING_DATA)
    reviewer = as_user(seeded["reviewer"].user)
    reviewer.post(f"/promotions/{pk}/review/", {"decision": "approve"})
    registry.card_revision_add(actor=owner, version=v2, content={**builders.CARD_WITH_TRAINING_DATA, "factors": "x"})
    r = text(review(reviewer, pk, "approve", card_revision="2", policy_version="1"))
    assert "changed while you were reviewing" in r and not Approval.objects.exists()


def test_review_posts_need_csrf(seeded):
    client = Client(enforce_csrf_checks=True)
    client.force_login(seeded["reviewer"].user)
    r = client.post(f"/promotions/{seeded['promotion'].pk}/review/", {"decision": "reject", "comment": "x"})
    assert r.status_code == 403
    assert client.get(f"/promotions/{seeded['promotion'].pk}/review/").status_code == 405


def test_requester_cancels(seeded):
    pk = seeded["promotion"].pk
    r = text(as_user(seeded["owner"].user).post(f"/promotions/{pk}/cancel/", {"reason": "wrong build"}, follow=True))
    assert "You cancelled promotion" in r and PromotionRequest.objects.get(pk=pk).state == "cancelled"
    r = text(as_user(seeded["reviewer"].user).post(f"/promotions/{pk}/cancel/", follow=True))
    assert 'role="alert"' in r


def test_card_text_is_escaped(seeded):
    owner, v2 = seeded["owner"].user, seeded["v2"]
    registry.card_revision_add(
        actor=owner, version=v2, content={**builders.CARD_WITH_TRAINING_DATA, "factors": "<script>alert(1)</script>"}
    )
    reviewer = as_user(seeded["reviewer"].user)
    for path in (f"/promotions/{seeded['promotion'].pk}/", "/models/acme/churn/versions/2/"):
        body = reviewer.get(path).content.decode()
        assert "<script>alert(1)</script>" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body, path


def test_model_page(seeded):
    registry.alias_set(actor=seeded["owner"].user, model=seeded["churn"], name="champion", number=1)
    page = text(as_user(seeded["reviewer"].user).get("/models/acme/churn/"))
    assert '<code>@champion</code> → <a href="/models/acme/churn/versions/1/">v1</a>' in page
    assert re.search(r'versions/1/">v1</a>.*?<a href="/targets/prod/">prod</a>', page)
    assert "auc=0.88" in page and "1 revision" in page


def test_version_page(seeded):
    page = text(as_user(seeded["reviewer"].user).get("/models/acme/churn/versions/2/"))
    assert "Gradient-boosted churn classifier." in page and "Model Details" in page
    assert "Incomplete" in page and "training_data" in page
    assert "none attached" in page  # signature
    assert f'href="/promotions/{seeded["promotion"].pk}/"' in page and "pending" in page
    assert "c0ffeev2" in page and "model-0.bin" in page
    v1 = text(as_user(seeded["reviewer"].user).get("/models/acme/churn/versions/1/"))
    assert '<a href="/targets/prod/">prod</a> (release 1, 100%)' in v1


def test_version_page_shows_an_older_card_revision(seeded):
    registry.card_revision_add(
        actor=seeded["owner"].user, version=seeded["v2"], content=builders.CARD_WITH_TRAINING_DATA
    )
    client = as_user(seeded["reviewer"].user)
    assert "CRM snapshots" in text(client.get("/models/acme/churn/versions/2/"))
    old = text(client.get("/models/acme/churn/versions/2/?revision=1"))
    assert "not the latest" in old and "CRM snapshots" not in old


def test_target_pages(seeded):
    client = as_user(seeded["reviewer"].user)
    listing = text(client.get("/targets/"))
    assert '<a href="/targets/prod/">prod</a>' in listing and "acme/churn v1" in listing
    page = text(client.get("/targets/prod/"))
    assert "acme/churn v1</a> — release 1, 100% of traffic" in page
    assert "members of reviewers" in page and "training_data" in page and "auc &gt;= 0.85" in page
    assert f'href="/promotions/{seeded["promotion"].pk}/"' in page


def test_target_page_hides_models_the_user_may_not_view(seeded, django_user_model):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(username="ops")
    user.user_permissions.add(Permission.objects.get(codename="view_deploymenttarget"))
    page = text(as_user(user).get("/targets/prod/"))
    assert "acme/churn" not in page and "a version of a model you may not view" in page


def test_nav_marks_the_current_page(seeded):
    page = as_user(seeded["reviewer"].user).get("/reviews/").content.decode()
    assert '<a href="/reviews/" aria-current="page">Reviews</a>' in page


def test_version_page_links_the_lineage_trail(seeded):
    client = as_user(seeded["reviewer"].user)
    page = client.get("/models/acme/churn/versions/2/").content.decode()
    link = re.search(r'<a href="(/api/v1/lineage/trail\?[^"]+)">Lineage trail</a>', page)[1].replace("&amp;", "&")
    r = client.get(link, HTTP_SEC_FETCH_SITE="same-origin")
    assert r.status_code == 200 and r["Content-Type"].startswith("text/html"), r.content[:300]


def test_a_trail_is_not_issued_for_a_link_on_another_site(seeded):
    """Issuing a trail writes an audit event in the reader's name: another site's link (the session cookie goes
    along) must not write them. A typed URL, a bookmark (Sec-Fetch-Site: none) or a token's client still may."""
    from audit.models import AuditEvent

    client = as_user(seeded["reviewer"].user)
    link = "/api/v1/lineage/trail?nodeId=model:acme/churn:2&format=html"
    issued = AuditEvent.objects.filter(action="lineage.trail_issued")
    for site in ("cross-site", "same-site"):
        refused = client.get(link, HTTP_SEC_FETCH_SITE=site)
        assert refused.status_code == 403, refused.content[:300]
        assert "came from a link on another site" in refused.json()["error"]["message"]
    assert not issued.exists()
    assert client.get(link, HTTP_SEC_FETCH_SITE="none").status_code == 200
    token = seeded["auditor"].client().get(link, HTTP_SEC_FETCH_SITE="cross-site")  # a token is no ambient credential
    assert token.status_code == 200
    assert issued.count() == 2


def test_unknown_card_revision_shows_the_latest(seeded):
    page = text(as_user(seeded["reviewer"].user).get("/models/acme/churn/versions/2/?revision=99"))
    assert 'Model card <span class="muted">(revision 1)</span>' in page


def test_a_nul_in_a_form_field_is_400_and_changes_nothing(seeded):
    """No browser sends a NUL from what a person typed; PostgreSQL cannot store one (a cancel reason was a 500)."""
    pk, reviewer, owner = seeded["promotion"].pk, seeded["reviewer"].user, seeded["owner"].user
    for client, path, data in (
        (as_user(owner), f"/promotions/{pk}/cancel/", {"reason": "wrong\x00build"}),
        (as_user(reviewer), f"/promotions/{pk}/review/", {"decision": "reject", "comment": "no\x00", "confirm": "yes"}),
        (as_user(seeded["admin"].user), "/targets/prod/rollback/", {"reason": "x\x00", "confirm": "yes"}),
        (as_user(owner), f"/promotions/{pk}/cancel/", {"reason\x00": "wrong build"}),
    ):
        response = client.post(path, data)
        assert response.status_code == 400, (path, response.status_code)
        assert b"NUL character" in response.content
    assert PromotionRequest.objects.get(pk=pk).state == "pending"
    assert not Approval.objects.filter(request_id=pk).exists()
    assert as_user(owner).post(f"/promotions/{pk}/cancel/", {"reason": "wrong build"}).status_code == 302
    assert PromotionRequest.objects.get(pk=pk).state == "cancelled"


def test_a_card_changed_after_the_request_page_was_read_sends_the_reviewer_back(seeded):
    """The request page's forms carry what it showed; the confirmation page is not offered for a card revision
    the reviewer never read (it would have bound the approval to it, showing only its number)."""
    owner, v2, pk = seeded["owner"].user, seeded["v2"], seeded["promotion"].pk
    registry.card_revision_add(actor=owner, version=v2, content=builders.CARD_WITH_TRAINING_DATA)
    reviewer = as_user(seeded["reviewer"].user)
    page = reviewer.get(f"/promotions/{pk}/").content.decode()
    shown = {
        n: re.search(rf'name="{n}" value="([^"]*)"', page)[1] for n in ("digest", "card_revision", "policy_version")
    }
    registry.card_revision_add(actor=owner, version=v2, content={**builders.CARD_WITH_TRAINING_DATA, "factors": "x"})
    back = reviewer.post(f"/promotions/{pk}/review/", {"decision": "approve", **shown}, follow=True)
    assert "Confirm your approval" not in text(back) and "changed while you were reviewing" in text(back)
    assert not Approval.objects.exists()
    page = reviewer.get(f"/promotions/{pk}/").content.decode()  # read again: now it confirms
    shown = {
        n: re.search(rf'name="{n}" value="([^"]*)"', page)[1] for n in ("digest", "card_revision", "policy_version")
    }
    confirm = reviewer.post(f"/promotions/{pk}/review/", {"decision": "approve", **shown})
    assert confirm.status_code == 200 and b"Confirm your approval" in confirm.content


def test_free_text_over_the_apis_limit_is_refused_by_the_forms_too(seeded):
    """A review comment, a cancel reason and a rollback reason have the API's bound (5,000 characters) in the UI as
    well: the audit log would keep an oversized one for good. Refused with the field's limit, nothing recorded."""
    from audit.models import AuditEvent
    from governance import free_text

    pk, big = seeded["promotion"].pk, "x" * (free_text.MAX_CHARS + 1)
    events = AuditEvent.objects.count()
    reviewer = as_user(seeded["reviewer"].user)
    page = text(reviewer.get(f"/promotions/{pk}/"))
    assert page.count(f'maxlength="{free_text.MAX_CHARS}"') == 2  # the approve and reject comments
    refused = text(reviewer.post(f"/promotions/{pk}/review/", {"decision": "reject", "comment": big}, follow=True))
    assert "Invalid comment: Ensure this field has no more than 5000 characters (it has 5001)." in refused
    refused = text(review(reviewer, pk, "reject", big, confirm=False))  # posted straight at the confirmation step
    assert "no more than 5000 characters" in refused
    owner = as_user(seeded["owner"].user)
    refused = text(owner.post(f"/promotions/{pk}/cancel/", {"reason": big}, follow=True))
    assert "Invalid reason: Ensure this field has no more than 5000 characters" in refused
    admin = as_user(seeded["admin"].user)
    refused = text(admin.post("/targets/prod/rollback/", {"reason": big}, follow=True))
    assert "Invalid reason" in refused
    assert PromotionRequest.objects.get(pk=pk).state == "pending" and not Approval.objects.exists()
    assert AuditEvent.objects.count() == events
    api = seeded["reviewer"].client().post(f"/api/v1/promotions/{pk}/reject", {"comment": big}, format="json")
    assert api.status_code == 400 and "comment" in api.json()["error"]["detail"]


def test_a_manager_of_the_target_sees_the_cancel_form(seeded):
    pk = seeded["promotion"].pk
    assert "Cancel this request" in text(as_user(seeded["admin"].user).get(f"/promotions/{pk}/"))
    assert "Cancel your request" in text(as_user(seeded["owner"].user).get(f"/promotions/{pk}/"))
    assert f'action="/promotions/{pk}/cancel/"' not in text(as_user(seeded["reviewer"].user).get(f"/promotions/{pk}/"))
    done = text(as_user(seeded["admin"].user).post(f"/promotions/{pk}/cancel/", {"reason": "freeze"}, follow=True))
    assert "You cancelled promotion" in done and PromotionRequest.objects.get(pk=pk).state == "cancelled"


def test_answers_to_a_signed_in_user_are_not_stored_by_caches(seeded):
    """After a logout, the back button or a shared browser must not show a reviewer's pages from its cache."""
    reviewer = as_user(seeded["reviewer"].user)
    for path in PAGES:
        response = reviewer.get(url(path, seeded))
        assert response.status_code == 200
        assert "no-store" in response["Cache-Control"] and "private" in response["Cache-Control"], path
    api = seeded["reviewer"].client().get("/api/v1/models/acme/churn/versions/2")  # an API token's answer too
    assert api.status_code == 200 and "no-store" in api["Cache-Control"]
    anonymous = Client().get("/accounts/login/")
    assert "no-store" in anonymous["Cache-Control"]  # Django's own, for the login form
    assert "Cache-Control" not in Client().get("/healthz").headers  # nobody signed in: caching left as it was
